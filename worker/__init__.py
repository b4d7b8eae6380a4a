"""The Celery worker: claims jobs, runs the optimizer pipeline, stores what it produced."""
