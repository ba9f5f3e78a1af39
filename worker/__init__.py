"""Celery worker entry point: ``celery -A worker worker`` finds ``app`` here."""

from worker.app import create_worker_app

app = create_worker_app()
