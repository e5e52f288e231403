"""The main job: the driver, its stages over work units (Phase 3 included), and the executors that run them."""
