"""A ClassifyService built from in-process fakes, for tests/unit/api/test_service.py to script and inspect."""

from collections.abc import Callable
from typing import Any, cast

import redis
from celery import Celery

from api.batching.batcher import EdgeBatcher, Pending
from api.batching.publisher import EdgePublisher
from api.batching.replies import ReplyListener
from api.broker.admission import Admission
from api.broker.circuit import Circuit
from api.service import ClassifyService
from shared.settings import Settings


class FakeBatcher:
    """Hand each submitted row to ``answer`` (which may resolve it), and record what was forgotten."""

    def __init__(self) -> None:
        self.answer: Callable[[Pending], None] = lambda pending: None
        self.submitted: list[Pending] = []
        self.forgotten: list[Pending] = []
        self.delivered: list[tuple[Any, Any, Any]] = []

    def submit(self, row: list[float], request_id: str | None = None) -> Pending:
        pending = Pending(row, request_id, enqueued=0.0)
        self.submitted.append(pending)
        self.answer(pending)
        return pending

    def forget(self, pending: Pending) -> None:
        self.forgotten.append(pending)

    def deliver(self, task_ids: Any, results: Any = None, error: Any = None) -> None:
        self.delivered.append((task_ids, results, error))


class FakeTables:
    """The publisher's ``table``: record each batch request, then let ``answer`` reply to it (or not)."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[list[float]], str, str | None]] = []
        self.answer: Callable[[str], None] = lambda task_id: None
        self.fail: Exception | None = None

    def table(self, rows: list[list[float]], task_id: str, request_id: str | None) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((rows, task_id, request_id))
        self.answer(task_id)


class FakeReplies:
    def __init__(self) -> None:
        self.started = 0

    def ensure_started(self) -> str:
        self.started += 1
        return "iris:reply:test"


class FakeAdmission:
    def __init__(self) -> None:
        self.refusal: Exception | None = None
        self.admitted = 0
        self.counted = 0  # messages counted without an admission: resends

    def admit(self) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.admitted += 1

    def count(self, messages: int = 1) -> None:
        self.counted += messages


class FakeResults:
    """The result backend's Redis client: keys with their TTLs, an event log, and an outage switch."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.keys: dict[str, tuple[bytes, int | None]] = {}
        self.events = events
        self.down = False

    def set(self, key: str, value: bytes, ex: int | None = None) -> bool:
        if self.down:
            raise redis.ConnectionError("Connection refused")
        self.events.append(("set", key))
        self.keys[key] = (value, ex)
        return True

    def exists(self, key: str) -> int:
        if self.down:
            raise redis.ConnectionError("Connection refused")
        return int(key in self.keys)


class World:
    """A service built from fakes, and the fakes, for a test to script and inspect."""

    def __init__(self, settings: Settings, celery: Celery, batcher: Any = None) -> None:
        self.settings = settings
        self.celery = celery
        self.events: list[tuple[Any, ...]] = []
        self.batcher = FakeBatcher()
        self.tables = FakeTables()
        self.replies = FakeReplies()
        self.admission = FakeAdmission()
        self.results = FakeResults(self.events)
        self.circuit = Circuit(open_seconds=60)  # stays open for the whole test once tripped
        self.service = ClassifyService(settings, celery, cast(EdgeBatcher, batcher or self.batcher),
                                       cast(EdgePublisher, self.tables), cast(ReplyListener, self.replies),
                                       cast(Admission, self.admission), self.circuit, cast(redis.Redis, self.results))

    def issued(self, task_id: str) -> tuple[bytes, int | None] | None:
        """Return the value and TTL of the key recording that the service issued ``task_id``."""
        return self.results.keys.get(f"{self.settings.key_prefix}task:{task_id}")


def memory_settings(**overrides: Any) -> Settings:
    """Settings for kombu's in-memory broker and Celery's in-memory result backend: no network."""
    return Settings(celery_broker_url="memory://", celery_result_backend="cache+memory://", **overrides)
