"""Fixtures the API's unit tests share: a Celery app on kombu's in-memory broker, and a queue of a test's own."""

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu.transport import memory

from shared.celery_app import create_celery
from shared.settings import Settings


@pytest.fixture
def celery(monkeypatch: pytest.MonkeyPatch) -> Celery:
    """A Celery app on kombu's memory broker: publishing tests need no Redis."""
    # Celery reads these before the URLs it is given: left set, they would point the app at Redis.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    return create_celery(Settings(celery_broker_url="memory://", celery_result_backend="cache+memory://"))


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of this test's own: kombu's memory broker keeps its queues process-wide."""
    name = f"iris-test-{uuid.uuid4().hex}"
    yield name
    memory.Channel.queues.pop(name, None)
