"""The training engine: loop, schedules, checkpoints, tracking."""
