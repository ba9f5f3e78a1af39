"""The lean strategy: a task it runs sees what Celery's strategy would show it, and the Celery 5.7 internals it uses."""

import datetime
import inspect
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import celery
import pytest
from celery import Celery, signals
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker import strategy as celery_strategy
from celery.worker.consumer import consumer as celery_consumer
from kombu import Connection, Exchange, Queue
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from worker.fastpaths.strategy import decode, lean

HEADERS = {"lang": "py", "task": "test.rows", "id": "batch-1", "root_id": "batch-1", "request_ids": ["req-1"],
           "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


@pytest.fixture
def app() -> Celery:
    return Celery("test", broker="memory://", set_as_current=False)


@pytest.fixture
def message(app: Celery) -> Iterator[Any]:
    """A kombu message of ``test.rows`` as a consumer receives it, from the memory transport."""
    with Connection("memory://") as conn:
        queue = Queue("lean-test", exchange=Exchange(""), routing_key="lean-test")
        producer = conn.Producer(serializer="json")
        producer.publish([[[[7.7, 2.6, 6.9, 2.3]], ["row-1"], "reply:1"], {}, {}], routing_key=queue.name,
                         declare=[queue], headers=HEADERS)
        received = queue.bind(conn.default_channel).get(accept=["json"])
        yield received
        queue.bind(conn.default_channel).delete()


def consumer(pool: Any) -> Any:
    return SimpleNamespace(pool=pool, hostname="lean@test", connection_errors=(OSError,))


def test_celery_is_the_5_7_series_the_bypass_was_written_against() -> None:
    assert celery.__version__.startswith("5.7."), "re-run this contract against the new Celery, then update the pin"


def test_celerys_consumer_calls_a_strategy_with_the_message_payload_ack_reject_and_callbacks() -> None:
    source = inspect.getsource(celery_consumer.Consumer.create_task_handler)
    assert "strategy(\n                        message, payload,\n" in source
    assert list(inspect.signature(celery_strategy.default).parameters)[:3] == ["task", "app", "consumer"]


def test_other_pools_keep_celerys_strategy(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    @app.task(name="test.rows")
    def task(*args: Any) -> None:
        pass

    chosen: list[Any] = []
    monkeypatch.setattr("worker.fastpaths.strategy.default", lambda *args, **kwargs: chosen.append(args))
    lean(task, app, consumer(object.__new__(PreforkPool)))
    assert len(chosen) == 1


def test_the_task_runs_with_its_arguments_headers_and_delivery_info_then_the_message_is_acknowledged(
        app: Celery, message: Any) -> None:
    seen: list[Any] = []

    @app.task(name="test.rows")
    def rows(batch: list[Any], task_ids: list[str], reply_to: str) -> None:
        request = rows.request
        seen.append((batch, task_ids, reply_to, request.id, request.request_ids, request.traceparent,
                     request.delivery_info["routing_key"], request.hostname))

    acked: list[Any] = []
    handle = lean(rows, app, consumer(object.__new__(SoloPool)))
    handle(message, None, lambda *args: acked.append(args), None, [])
    assert seen == [([[7.7, 2.6, 6.9, 2.3]], ["row-1"], "reply:1", "batch-1", ["req-1"], HEADERS["traceparent"],
                     "lean-test", "lean@test")]
    assert len(acked) == 1
    assert rows.request.id is None  # the request context is popped again


def test_prerun_and_postrun_are_sent_when_connected_and_a_raising_task_is_logged_and_acknowledged(
        app: Celery, message: Any, caplog: pytest.LogCaptureFixture) -> None:
    @app.task(name="test.rows")
    def rows(*args: Any) -> None:
        raise ValueError("broken batch")

    events: list[tuple[str, Any]] = []

    def prerun(task_id: str, **_: Any) -> None:
        events.append(("prerun", task_id))

    def postrun(task_id: str, state: str, **_: Any) -> None:
        events.append(("postrun", state))

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
    acked: list[Any] = []
    try:
        with caplog.at_level(logging.ERROR, logger="worker.fastpaths.strategy"):
            lean(rows, app, consumer(object.__new__(SoloPool)))(message, None, lambda *a: acked.append(a), None, [])
    finally:
        signals.task_prerun.disconnect(prerun)
        signals.task_postrun.disconnect(postrun)
    assert events == [("prerun", "batch-1"), ("postrun", "FAILURE")]
    assert "test.rows batch-1 raised unexpectedly" in caplog.text and "broken batch" in caplog.text
    assert len(acked) == 1


def test_a_message_in_a_refused_content_type_is_not_run(app: Celery) -> None:
    ran: list[Any] = []

    @app.task(name="test.rows")
    def task(*args: Any) -> None:
        ran.append(args)

    with Connection("memory://") as conn:
        queue = Queue("lean-pickle", exchange=Exchange(""), routing_key="lean-pickle")
        conn.Producer(serializer="pickle").publish([[1], {}, {}], routing_key=queue.name, declare=[queue],
                                                    headers=HEADERS)
        received = queue.bind(conn.default_channel).get(accept=["json", "pickle"])
        received.accept = {"application/json"}  # what the worker accepts (shared.celery_app: JSON only)
        with pytest.raises(ContentDisallowed):
            lean(task, app, consumer(object.__new__(SoloPool)))(received, None, lambda *a: None, None, [])
        queue.bind(conn.default_channel).delete()
    assert ran == []


def test_a_json_body_orjson_refuses_is_decoded_by_kombu_as_before(app: Celery) -> None:
    seen: list[Any] = []

    @app.task(name="test.rows")
    def task(*args: Any) -> None:
        seen.append(args)

    with Connection("memory://") as conn:
        queue = Queue("lean-nan", exchange=Exchange(""), routing_key="lean-nan")
        conn.Producer(serializer="json").publish([[float("nan"), 2**70], {}, {}], routing_key=queue.name,
                                                  declare=[queue], headers=HEADERS)
        received = queue.bind(conn.default_channel).get(accept=["json"])
        lean(task, app, consumer(object.__new__(SoloPool)))(received, None, lambda *a: None, None, [])
        queue.bind(conn.default_channel).delete()
    (args,) = seen
    assert args[0] != args[0] and args[1] == 2**70  # NaN and a 71-bit integer: stdlib JSON, not orjson


def test_a_body_with_kombus_typed_objects_is_decoded_by_kombu_as_before(app: Celery) -> None:
    seen: list[Any] = []
    when = datetime.datetime(2026, 12, 4, 5, 30, tzinfo=datetime.UTC)

    @app.task(name="test.rows")
    def task(*args: Any) -> None:
        seen.append(args)

    with Connection("memory://") as conn:
        queue = Queue("lean-typed", exchange=Exchange(""), routing_key="lean-typed")
        conn.Producer(serializer="json").publish([[when, [1.5]], {}, {}], routing_key=queue.name,
                                                  declare=[queue], headers=HEADERS)
        received = queue.bind(conn.default_channel).get(accept=["json"])
        assert isinstance(received.body, bytes) and b'"__type__"' in received.body
        lean(task, app, consumer(object.__new__(SoloPool)))(received, None, lambda *a: None, None, [])
        queue.bind(conn.default_channel).delete()
    assert seen == [(when, [1.5])]


def test_kombus_message_keeps_its_decoded_body_where_decode_leaves_it() -> None:
    # decode() fills kombu's own cache, which message.payload (Celery's strategy) and message.decode() read first.
    assert "self._decoded_cache if self._decoded_cache else self.decode()" in inspect.getsource(Message.payload.fget)
    assert "if not self._decoded_cache:" in inspect.getsource(Message.decode)


def test_a_body_is_decoded_once_for_the_guard_the_strategy_and_celery(message: Any) -> None:
    decoded = decode(message)
    assert decoded == [[[[7.7, 2.6, 6.9, 2.3]], ["row-1"], "reply:1"], {}, {}]
    assert decode(message) is decoded and message.payload is decoded and message.decode() is decoded
