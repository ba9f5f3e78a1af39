"""The BRPOP guard on a real Redis: a task Redis wrote into a consumer's socket is never dropped unread."""

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from shared.transport import brpop
from tests.conftest import LONELY_BROKER_DB

pytestmark = pytest.mark.integration

QUEUE = "iris-test-brpop-guard"


@pytest.fixture
def waiting(redis_base: str) -> Iterator[tuple[Any, Any, redis.Redis]]:
    """A guard channel whose BRPOP on an empty queue is outstanding, and a plain client on the same database."""
    url = f"{redis_base}/{LONELY_BROKER_DB}"
    plain = redis.Redis.from_url(url)
    plain.delete(QUEUE)
    with Connection(url, transport=brpop.Transport) as conn:
        channel = conn.channel()
        channel.basic_consume(QUEUE, False, lambda message: None, "iris-test-guard")
        channel.client.connection = channel.client.connection_pool.get_connection()
        channel._brpop_start(timeout=30)
        yield conn, channel, plain
    plain.delete(QUEUE)
    plain.close()


def wait_until_written(channel: Any) -> None:
    """Block until Redis has written the BRPOP reply into the channel's socket."""
    deadline = time.monotonic() + 5
    while not brpop._holds_data(channel.client.connection._sock):
        assert time.monotonic() < deadline, "Redis never answered the BRPOP"
        time.sleep(0.01)


def test_the_salvage_puts_a_popped_but_unread_task_back_on_its_queue(waiting: tuple[Any, Any, redis.Redis]) -> None:
    conn, channel, plain = waiting
    plain.lpush(QUEUE, b'{"body": "task"}')
    wait_until_written(channel)
    assert plain.llen(QUEUE) == 0  # Redis popped it: only the unread socket holds it now
    assert brpop.salvage_unread_replies(conn.transport) == 1
    assert plain.lrange(QUEUE, 0, -1) == [b'{"body": "task"}']


def test_the_next_brpop_delivers_an_unread_reply_first(waiting: tuple[Any, Any, redis.Redis]) -> None:
    conn, channel, plain = waiting
    delivered: list[Any] = []
    conn.transport._deliver = lambda message, queue: delivered.append((queue, message))
    # A message as kombu writes one: the channel drops anything else before delivery.
    message = {"body": "dGFzaw==", "content-encoding": "utf-8", "content-type": "application/json",
               "headers": {}, "properties": {"body_encoding": "base64", "delivery_tag": "tag-1",
                                             "delivery_info": {"exchange": "", "routing_key": QUEUE}}}
    plain.lpush(QUEUE, json.dumps(message))
    wait_until_written(channel)
    channel._in_poll = None  # kombu lost track of the outstanding BRPOP, as after a pause through a restart
    channel._brpop_start(timeout=1)
    assert delivered == [(QUEUE, message)]
