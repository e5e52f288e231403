"""An output dir: its row schema, layout, commits, ledger, verification, readers, lease, card and exports."""
