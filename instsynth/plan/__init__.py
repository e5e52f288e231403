"""What will be generated, fixed before any GPU is touched: Phase 1 selection, prompts, seeds, the plan file."""
