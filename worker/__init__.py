"""Celery worker entry point: ``celery -A worker worker`` finds ``app`` here."""

from worker import logs
from worker.app import create_worker_app

logs.install()  # process-wide: JSON log lines for this worker process, set up by its entry point
app = create_worker_app()
