"""Fast paths past Celery's generic machinery for the internal tasks; FAST_PATHS=0 turns them off."""
