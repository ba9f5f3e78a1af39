"""The edge publisher's unread pushes on a real Redis: a batch refused or cut off after ``publish`` returned is
sent again or reported lost, never dropped in silence (api/batching/publisher.py)."""

import base64
import json
import threading
import time
from typing import Any

import pytest
import redis
from kombu import Exchange, Queue

from api.batching.publisher import EdgePublisher
from api.broker.circuit import Circuit
from shared.celery_app import create_celery
from shared.settings import Settings
from tests.helpers import RedisServer

pytestmark = pytest.mark.integration

QUEUE = "iris-test.unread"
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 2.6, 6.9, 2.3]]


class Lost:
    """The publisher's ``lost`` callback: records what it was told, and when."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Exception]] = []
        self.called = threading.Event()

    def __call__(self, task_ids: list[str], error: Exception) -> None:
        self.calls.append((task_ids, error))
        self.called.set()


def publisher(redis_url: str, circuit: Circuit, lost: Lost) -> EdgePublisher:
    celery = create_celery(Settings(celery_broker_url=redis_url, celery_result_backend=redis_url))
    return EdgePublisher(celery, Queue(QUEUE, exchange=Exchange(""), routing_key=QUEUE), lambda: "iris:reply:t",
                         circuit, fast=True, lost=lost)


def queued_task_ids(server: RedisServer) -> list[list[str]]:
    """Return the task ids of each message on the queue, oldest first."""
    return [_body(raw)[1] for raw in reversed(server.client().lrange(QUEUE, 0, -1))]


def _body(raw: bytes) -> Any:
    return json.loads(base64.b64decode(json.loads(raw)["body"]))[0]


def test_a_push_redis_refuses_is_reported_lost_with_no_later_batch(private_redis: RedisServer) -> None:
    lost, circuit = Lost(), Circuit(open_seconds=60)
    send = publisher(private_redis.url(0), circuit, lost)
    send(ROWS[:1], ["kept"], [None])
    private_redis.client().config_set("maxmemory", "1")  # noeviction: every write is refused with OOM
    try:
        send(ROWS, ["a", "b"], [None, None])  # returns before Redis answers
        assert lost.called.wait(2.0), "no batch reported lost"
    finally:
        private_redis.client().config_set("maxmemory", "0")
    assert [ids for ids, _ in lost.calls] == [["a", "b"]]
    assert isinstance(lost.calls[0][1], redis.ResponseError) and "maxmemory" in str(lost.calls[0][1])
    assert circuit.is_open()
    assert queued_task_ids(private_redis) == [["kept"]]


def test_a_push_whose_connection_broke_is_sent_again_on_a_fresh_one(private_redis: RedisServer) -> None:
    lost, circuit = Lost(), Circuit(open_seconds=60)
    send = publisher(private_redis.url(0), circuit, lost)
    send(ROWS[:1], ["first"], [None])
    time.sleep(EdgePublisher.SETTLE_SECONDS * 5)  # its reply read by the settler
    admin = private_redis.client()
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # as when Redis drops idle clients
    send(ROWS, ["a", "b"], [None, None])  # written to a closed connection: Redis never answers it
    deadline = time.monotonic() + 2.0
    while queued_task_ids(private_redis) != [["first"], ["a", "b"]] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queued_task_ids(private_redis) == [["first"], ["a", "b"]]
    assert lost.calls == [] and not circuit.is_open()


def test_each_batch_is_queued_once_in_order_while_replies_go_unread(private_redis: RedisServer) -> None:
    lost = Lost()
    send = publisher(private_redis.url(0), Circuit(open_seconds=60), lost)
    batches = [[f"row-{n}"] for n in range(50)]
    for task_ids in batches:
        send(ROWS[:1], task_ids, [None])
    time.sleep(EdgePublisher.SETTLE_SECONDS * 5)
    assert queued_task_ids(private_redis) == batches
    assert lost.calls == []


def test_while_redis_is_down_a_push_fails_at_once_or_is_reported_lost(private_redis: RedisServer) -> None:
    lost, circuit = Lost(), Circuit(open_seconds=60)
    send = publisher(private_redis.url(0), circuit, lost)
    send(ROWS[:1], ["before"], [None])
    time.sleep(EdgePublisher.SETTLE_SECONDS * 5)
    private_redis.stop()
    try:
        send(ROWS, ["a", "b"], [None, None])
    except Exception as exc:  # the closed socket noticed on write: the batcher fails the rows itself
        assert "onnect" in str(exc) or isinstance(exc, OSError), exc
    else:  # noticed only on the unread reply: the rows are reported lost
        assert lost.called.wait(2.0), "no batch reported lost"
        assert lost.calls[0][0] == ["a", "b"]
    assert circuit.is_open()
