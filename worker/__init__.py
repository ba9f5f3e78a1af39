"""Celery worker entry point: ``celery -A worker worker`` finds ``app`` here."""

from worker import logs, tracing
from worker.app import create_worker_app

logs.install()  # process-wide: JSON log lines for this worker process, set up by its entry point
tracing.install()  # process-wide: a span per task, only when the OTel environment turns tracing on
app = create_worker_app()
