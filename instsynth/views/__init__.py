"""What people look at: status, stats, preview grids and the static report site."""
