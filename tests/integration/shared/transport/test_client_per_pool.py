"""The kombu bypass on a real Redis: messages go through it as through kombu's own transport, on one client."""

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from shared.transport.client_per_pool import Channel, Transport
from tests.conftest import LONELY_BROKER_DB

pytestmark = pytest.mark.integration


@pytest.fixture(params=[Transport, kombu_redis.Transport], ids=["bypass", "kombu"])
def channel(request: pytest.FixtureRequest, redis_base: str) -> Iterator[Any]:
    """A channel on the broker database no worker consumes, through each transport."""
    with Connection(f"{redis_base}/{LONELY_BROKER_DB}", transport=request.param) as conn:
        yield conn.channel()


def test_a_message_is_published_received_and_acknowledged(channel: Any) -> None:
    queue = f"iris-test-bypass-{type(channel).__module__}"
    channel.queue_purge(queue)
    channel.basic_publish(channel.prepare_message("hello"), exchange="", routing_key=queue)
    got = channel.basic_get(queue, no_ack=False)
    assert got is not None and got.body == b"hello"
    with channel.conn_or_acquire() as client:
        assert client.hget(channel.unacked_key, got.delivery_tag) is not None  # kombu's redelivery record
        channel.basic_ack(got.delivery_tag)
        assert client.hget(channel.unacked_key, got.delivery_tag) is None
    assert channel.basic_get(queue) is None


def test_the_bypass_reuses_one_client_until_its_pool_is_replaced(redis_base: str) -> None:
    with Connection(f"{redis_base}/{LONELY_BROKER_DB}", transport=Transport) as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        with channel.conn_or_acquire() as client:
            assert client is first and client.ping()
        assert channel._create_client(asynchronous=True) is not first
        channel._after_fork()  # kombu drops its pools after a fork and on close
        second = channel._create_client()
        assert second is not first and second.ping()
