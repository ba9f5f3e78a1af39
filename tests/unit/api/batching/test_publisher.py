"""The edge publisher, on kombu's in-memory broker; also the contract test of api/batching/task_messages.py.

The fast path (FAST_PATHS=1) must queue the very message Celery's documented ``send_task_message`` queues, and
fire the same signals, or workers, Flower and tracing would see edge batches differently.
"""

import base64
import json
import logging
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest
import redis
from amqp.exceptions import MessageNacked
from celery import Celery, signals
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.transport import memory

from api.batching.publisher import EdgePublisher
from api.broker.circuit import Circuit
from api.errors import QueueFull, QueueUnavailable
from shared import tasks
from shared.celery_app import create_celery
from shared.settings import Settings
from tests.unit.shared import fake_redis

ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 2.6, 6.9, 2.3]]
TASK_IDS = ["row-1", "row-2"]
REQUEST_IDS: list[str | None] = ["req-1", None]
REPLY_TO = "iris:reply:test"
# Different on every message by design: the envelope's own id, and the broker's delivery bookkeeping.
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "delivery_info", "origin"}


def test_celery_and_kombu_are_the_versions_the_bypass_was_written_against() -> None:
    found = {name: version(name) for name in ("celery", "kombu")}
    assert all(v.startswith("5.7.") for v in found.values()), (
        f"installed {found}; api/batching/task_messages.py was written against celery and kombu 5.7. "
        "Re-measure it (python -m load.bench_publish), re-check it against this file's tests and update this "
        "pin, or run the API with FAST_PATHS=0 (Celery's documented send_task_message)")


@pytest.fixture
def circuit() -> Circuit:
    return Circuit(open_seconds=60)  # stays open for the whole test once tripped


@pytest.fixture(params=[True, False], ids=["fast", "documented"])
def fast(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def publisher(celery: Celery, queue: str, circuit: Circuit, fast: bool) -> EdgePublisher:
    return EdgePublisher(celery, Queue(queue, exchange=Exchange(""), routing_key=queue),
                         lambda: REPLY_TO, circuit, fast)


def take(celery: Celery, queue: str) -> Any:
    """Return the next message on ``queue`` (None if it is empty), read on a connection of its own."""
    with celery.connection_for_read() as conn:
        return conn.default_channel.basic_get(queue, no_ack=True)


def comparable(message: Any) -> dict[str, Any]:
    """Return what a worker reads of ``message``, without what differs on every message."""
    return {
        "headers": {k: v for k, v in message.headers.items() if k not in PER_MESSAGE},
        "properties": {k: v for k, v in message.properties.items() if k not in PER_MESSAGE},
        "content_type": message.content_type, "content_encoding": message.content_encoding,
        "payload": message.payload,
    }


def test_the_queued_message_is_a_classify_rows_task_for_the_batch(celery: Celery, queue: str, circuit: Circuit,
                                                                  fast: bool) -> None:
    send = publisher(celery, queue, circuit, fast)
    send(ROWS, TASK_IDS, REQUEST_IDS)
    send.close()
    message = take(celery, queue)
    assert message.headers["task"] == tasks.CLASSIFY_ROWS
    assert message.headers["argsrepr"] == "(2 rows)" and message.headers["ignore_result"] is True
    assert message.headers["request_ids"] == REQUEST_IDS
    assert message.payload[0] == [ROWS, TASK_IDS, REPLY_TO]
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2
    assert message.delivery_info["routing_key"] == queue
    assert take(celery, queue) is None  # one message per batch


def test_the_fast_path_queues_the_same_message_as_the_documented_path(celery: Celery, queue: str,
                                                                      circuit: Circuit) -> None:
    messages = []
    for fast in (True, False):
        send = publisher(celery, queue, circuit, fast)
        send(ROWS, TASK_IDS, REQUEST_IDS)
        send.close()
        messages.append(take(celery, queue))
    assert comparable(messages[0]) == comparable(messages[1])


def test_both_paths_fire_the_publish_signals_once_per_batch(celery: Celery, queue: str, circuit: Circuit,
                                                            fast: bool) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def before(sender: str, **kwargs: Any) -> None:
        seen.append(("before", {"sender": sender, **kwargs}))

    def after(sender: str, **kwargs: Any) -> None:
        seen.append(("after", {"sender": sender, **kwargs}))

    signals.before_task_publish.connect(before, weak=False)
    signals.after_task_publish.connect(after, weak=False)
    try:
        send = publisher(celery, queue, circuit, fast)
        send(ROWS, TASK_IDS, REQUEST_IDS)
        send(ROWS[:1], TASK_IDS[:1], REQUEST_IDS[:1])
        send.close()
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    assert [name for name, _ in seen] == ["before", "after", "before", "after"]
    for _, sent in seen:
        assert sent["sender"] == tasks.CLASSIFY_ROWS and sent["routing_key"] == queue
        assert sent["headers"]["task"] == tasks.CLASSIFY_ROWS and "request_ids" in sent["headers"]
    assert seen[0][1]["body"][0] == [ROWS, TASK_IDS, REPLY_TO]


def test_an_open_circuit_raises_without_publishing(celery: Celery, queue: str, circuit: Circuit,
                                                   fast: bool) -> None:
    circuit.trip()
    with pytest.raises(QueueUnavailable):
        publisher(celery, queue, circuit, fast)(ROWS, TASK_IDS, REQUEST_IDS)
    assert take(celery, queue) is None


class BrokenChannels:
    """Make kombu's memory channels fail to put a message: those listed in ``broken``, or all with ``every``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
        self.error = error
        self.broken: set[int] = set()
        self.every = False
        self.tried: list[int] = []  # id() of the channel each publish attempt used
        real_put = memory.Channel._put

        def put(channel: Any, queue: str, message: Any, **kwargs: Any) -> None:
            self.tried.append(id(channel))
            if self.every or id(channel) in self.broken:
                raise self.error
            real_put(channel, queue, message, **kwargs)

        monkeypatch.setattr(memory.Channel, "_put", put)


def test_a_failed_publish_on_the_kept_connection_is_retried_once_on_a_fresh_one(
        celery: Celery, queue: str, circuit: Circuit, fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    channels = BrokenChannels(monkeypatch, redis.ConnectionError("Connection reset by peer"))
    send = publisher(celery, queue, circuit, fast)
    send(ROWS[:1], TASK_IDS[:1], REQUEST_IDS[:1])  # opens and keeps the connection
    kept = channels.tried[-1]
    channels.broken.add(kept)  # as after a Redis restart
    send(ROWS, TASK_IDS, REQUEST_IDS)
    send.close()
    assert channels.tried[1:] == [kept, channels.tried[-1]] and channels.tried[-1] != kept
    assert not circuit.is_open()
    assert take(celery, queue).payload[0][1] == TASK_IDS[:1]
    assert take(celery, queue).payload[0][1] == TASK_IDS


def test_a_second_failure_trips_the_circuit_and_raises(celery: Celery, queue: str, circuit: Circuit, fast: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    channels = BrokenChannels(monkeypatch, redis.ConnectionError("Connection refused"))
    channels.every = True
    with pytest.raises(redis.ConnectionError):
        publisher(celery, queue, circuit, fast)(ROWS, TASK_IDS, REQUEST_IDS)
    assert len(channels.tried) == 2 and channels.tried[0] != channels.tried[1]
    assert circuit.is_open()
    channels.every = False
    assert take(celery, queue) is None


def test_a_timeout_is_not_retried(celery: Celery, queue: str, circuit: Circuit, fast: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    channels = BrokenChannels(monkeypatch, redis.TimeoutError("Timeout reading from socket"))
    channels.every = True
    with pytest.raises(redis.TimeoutError):
        publisher(celery, queue, circuit, fast)(ROWS, TASK_IDS, REQUEST_IDS)
    assert len(channels.tried) == 1  # a hung Redis hangs a fresh connection too
    assert circuit.is_open()


def nacked_through_kombu() -> Exception:
    """kombu's OperationalError from py-amqp's MessageNacked, as a publish through kombu's ``ensure`` raises it."""
    error = OperationalError("")
    error.__cause__ = MessageNacked()
    return error


@pytest.mark.parametrize("nack", [MessageNacked, nacked_through_kombu], ids=["bare", "kombu-wrapped"])
def test_a_batch_the_broker_refuses_is_queue_full_sent_once_and_the_kept_connection_serves_on(
        celery: Celery, queue: str, circuit: Circuit, fast: bool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, nack: Callable[[], Exception]) -> None:
    channels = BrokenChannels(monkeypatch, nack())
    send = publisher(celery, queue, circuit, fast)
    send(ROWS[:1], TASK_IDS[:1], REQUEST_IDS[:1])  # opens and keeps the connection
    kept = channels.tried[-1]
    channels.every = True  # the queue is at the broker's bound: every publish is nacked
    with caplog.at_level(logging.WARNING, logger="api.broker.circuit"):
        with pytest.raises(QueueFull) as raised:
            send(ROWS, TASK_IDS, REQUEST_IDS)
        with pytest.raises(QueueFull):
            send.table(ROWS, "table-1", None)
    assert raised.value.__suppress_context__ and raised.value.message == QueueFull.refused
    assert channels.tried[1:] == [kept, kept]  # once each, on the kept connection: a nack is no broken connection
    assert not circuit.is_open()
    [record] = caplog.records  # the refusals of one second, in one line
    assert "iris.classify_rows" in record.getMessage() and "Redis" not in record.getMessage()
    channels.every = False  # room again: the next batch goes at once, on the same connection
    send(ROWS, TASK_IDS, REQUEST_IDS)
    assert channels.tried[-1] == kept
    send.close()
    assert take(celery, queue).payload[0][1] == TASK_IDS[:1]
    assert take(celery, queue).payload[0][1] == TASK_IDS
    assert take(celery, queue) is None


def test_a_connection_refused_still_trips_the_circuit_after_a_refusal(
        celery: Celery, queue: str, circuit: Circuit, fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    channels = BrokenChannels(monkeypatch, MessageNacked())
    channels.every = True
    send = publisher(celery, queue, circuit, fast)
    with pytest.raises(QueueFull):
        send(ROWS, TASK_IDS, REQUEST_IDS)
    channels.error = OperationalError("[Errno 111] Connection refused")
    with pytest.raises(OperationalError):
        send(ROWS, TASK_IDS, REQUEST_IDS)
    assert len(channels.tried) == 3 and circuit.is_open()  # the outage was retried on a fresh connection, then tripped


def test_on_redis_the_fast_path_pushes_what_kombus_redis_transport_pushes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_redis.install(monkeypatch)  # kombu's Redis channels get clients that keep lists in memory
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    celery = create_celery(Settings(celery_broker_url=fake_redis.URL, celery_result_backend="cache+memory://"))
    queue = Queue("iris-test.rows", exchange=Exchange(""), routing_key="iris-test.rows")
    pushed = []
    for fast in (True, False):
        send = EdgePublisher(celery, queue, lambda: REPLY_TO, Circuit(open_seconds=60), fast)
        send(ROWS, TASK_IDS, REQUEST_IDS)
        send.close()
        pushed.append(json.loads(fake().rpop(queue.name)))
    fast_message, kombu_message = (strip(message) for message in pushed)
    assert fast_message == kombu_message
    assert fast_message["body"][0] == [ROWS, TASK_IDS, REPLY_TO]


def strip(message: dict[str, Any]) -> dict[str, Any]:
    """Return a raw Redis message, its body decoded, without what differs on every message (the body holds no id)."""
    headers = {k: v for k, v in message["headers"].items() if k not in PER_MESSAGE}
    properties = {k: v for k, v in message["properties"].items() if k not in PER_MESSAGE}
    body = json.loads(base64.b64decode(message["body"]))  # the same JSON, spaced as each encoder spaces it
    return {**message, "body": body, "headers": headers, "properties": properties}
