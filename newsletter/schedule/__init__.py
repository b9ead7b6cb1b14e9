"""The schedule wing: APScheduler wiring, jobs, run records, waves, the pipeline."""
