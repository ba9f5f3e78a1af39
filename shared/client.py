"""A small typed client for Python services that install this package."""

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from shared import tasks
from shared.celery_app import create_celery
from shared.schemas import ClassifyPayload, Prediction
from shared.settings import Settings, get_settings


class IrisClient:
    """Call the Iris workers by task name; payloads are validated before they are queued."""

    def __init__(self, app: Celery | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or create_celery(self.settings)

    def classify_async(self, payload: Mapping[str, Any] | ClassifyPayload) -> AsyncResult:
        """Queue one classification and return its handle."""
        body = ClassifyPayload.model_validate(payload).model_dump()
        return self.app.send_task(tasks.CLASSIFY, args=[body], queue=self.settings.iris_queue)

    def classify(self, payload: Mapping[str, Any] | ClassifyPayload, timeout: float | None = None) -> Prediction:
        """Classify one flower and wait for the answer."""
        result = self.classify_async(payload)
        return Prediction.model_validate(result.get(timeout=timeout or self.settings.sync_timeout_seconds))

    def classify_batch(self, payloads: Iterable[Mapping[str, Any] | ClassifyPayload],
                       timeout: float | None = None) -> list[Prediction]:
        """Classify many flowers in one task and return the answers in order."""
        bodies = [ClassifyPayload.model_validate(p).model_dump() for p in payloads]
        result = self.app.send_task(tasks.CLASSIFY_BATCH, args=[bodies], queue=self.settings.iris_queue)
        answers = result.get(timeout=timeout or self.settings.sync_timeout_seconds)
        return [Prediction.model_validate(answer) for answer in answers]
