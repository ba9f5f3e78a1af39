"""The no-ack bypass: a no-ack consumer's messages acknowledge without Redis, and the kombu 5.7 internals it uses."""

import inspect
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
from kombu.message import Message

from shared.transport import client_per_pool
from shared.transport.no_ack import Channel, Transport
from tests.unit.shared.fake_redis import open_channel


@pytest.fixture
def channel(fake_redis: type, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A channel of the bypass transport whose acknowledgements are recorded instead of sent."""
    channels = open_channel(Transport)
    opened = next(channels)
    opened.acked = []

    def basic_ack(delivery_tag: str, multiple: bool = False) -> None:
        opened.acked.append(delivery_tag)

    monkeypatch.setattr(opened, "basic_ack", basic_ack)
    yield opened
    next(channels, None)  # closes the connection


def deliver(channel: Any, queue: str, no_ack: bool, tag: str) -> Any:
    """Consume ``queue`` under consumer ``tag`` and deliver one message to it as kombu does; return the message."""
    got: list[Any] = []
    channel.basic_consume(queue, no_ack, got.append, tag)
    raw = channel.prepare_message("body")
    channel._inplace_augment_message(raw, "", queue)  # what basic_publish adds: delivery tag and info
    channel.connection._callbacks[queue](raw)
    (message,) = got
    return message


def test_kombu_is_the_5_7_series_the_bypass_was_written_against() -> None:
    assert kombu.__version__.startswith("5.7."), "re-run this contract against the new kombu, then update the pin"


def test_kombus_message_ack_skips_consumers_the_channel_lists_as_no_ack() -> None:
    # The check this bypass fills in for the virtual transport, as the AMQP transports do.
    source = inspect.getsource(Message.ack)
    assert "self.channel.no_ack_consumers" in source and "self.delivery_info['consumer_tag']" in source


def test_the_bypass_keeps_the_client_cache_and_the_brpop_guard() -> None:
    assert issubclass(Channel, client_per_pool.Channel)


def test_a_no_ack_consumers_message_acknowledges_without_a_redis_call(channel: Any) -> None:
    message = deliver(channel, "rows", no_ack=True, tag="rows-consumer")
    assert message.delivery_tag not in channel.qos._delivered  # kombu recorded nothing to redeliver
    message.ack()
    assert channel.acked == []


def test_an_acknowledged_consumers_message_still_acknowledges_through_redis(channel: Any) -> None:
    message = deliver(channel, "tasks", no_ack=False, tag="tasks-consumer")
    assert message.delivery_tag in channel.qos._delivered
    message.ack()
    assert channel.acked == [message.delivery_tag]


def test_a_cancelled_no_ack_consumer_is_forgotten(channel: Any) -> None:
    deliver(channel, "rows", no_ack=True, tag="rows-consumer")
    channel.basic_cancel("rows-consumer")
    assert "rows-consumer" not in channel.no_ack_consumers
