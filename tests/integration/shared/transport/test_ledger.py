"""The ledger on a real Redis: a message is always in its list, its ledger or kombu's unacked hash, and the sweep
pushes back one that was popped and never delivered."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from shared.transport.ledger import ledger_keys
from shared.transport.no_ack import Transport
from tests.conftest import LONELY_BROKER_DB

pytestmark = pytest.mark.integration

QUEUE = "iris-test-ledger"
GRACE = 0.3  # the channel's visibility timeout: how long a popped message may go undelivered


@pytest.fixture
def channel(redis_base: str) -> Iterator[Any]:
    """A channel that ledgers QUEUE, on the broker database no worker consumes; everything it made is removed."""
    url = f"{redis_base}/{LONELY_BROKER_DB}"
    options = {"ledger_queues": (QUEUE,), "visibility_timeout": GRACE}
    with Connection(url, transport=Transport, transport_options=options) as conn:
        chan = conn.channel()
        chan.queue_declare(QUEUE)
        chan._active_queues.append(QUEUE)  # as a consumer of QUEUE sweeps it
        yield chan
    client = redis.Redis.from_url(url)
    client.delete(QUEUE, *ledger_keys(QUEUE), "unacked", "unacked_index")


def redis_of(channel: Any) -> redis.Redis:
    return redis.Redis(connection_pool=channel.pool)


def publish(channel: Any, body: str) -> str:
    message = channel.prepare_message(body)
    channel.basic_publish(message, exchange="", routing_key=QUEUE)
    return str(message["properties"]["delivery_tag"])


def ledgered(channel: Any) -> list[bytes]:
    return list(redis_of(channel).zrange(ledger_keys(QUEUE)[0], 0, -1))


def test_a_published_message_is_ledgered_until_delivered_then_only_unacked_holds_it(channel: Any) -> None:
    tag = publish(channel, "one")
    assert ledgered(channel) == [tag.encode()]
    assert redis_of(channel).llen(QUEUE) == 1
    got = channel.basic_get(QUEUE, no_ack=False)
    assert got is not None and got.body == b"one"
    client = redis_of(channel)
    assert ledgered(channel) == [] and client.hlen(ledger_keys(QUEUE)[1]) == 0
    assert client.hget("unacked", tag) is not None  # kombu's record took over in the same MULTI
    channel.basic_ack(got.delivery_tag)
    assert client.hget("unacked", tag) is None


def test_a_message_popped_and_never_delivered_comes_back_after_the_visibility_timeout(channel: Any) -> None:
    publish(channel, "lost")
    client = redis_of(channel)
    popped = client.rpop(QUEUE)  # Redis wrote this reply to a worker whose cable was just pulled
    assert channel.sweep_ledgers() == 0  # first seen missing: it may still be on its way to a worker
    assert client.zcard(ledger_keys(QUEUE)[2]) == 1
    time.sleep(GRACE + 0.1)
    assert channel.sweep_ledgers() == 1
    assert client.lrange(QUEUE, -1, -1) == [popped]  # the same message, at the end BRPOP takes next
    got = channel.basic_get(QUEUE, no_ack=False)
    assert got is not None and got.body == b"lost"
    assert ledgered(channel) == [] and client.zcard(ledger_keys(QUEUE)[2]) == 0


def test_a_message_delivered_within_the_grace_is_not_restored(channel: Any) -> None:
    publish(channel, "slow")
    client = redis_of(channel)
    assert channel.sweep_ledgers() == 0  # queued: nothing suspect
    raw = client.rpop(QUEUE)  # popped, its reply still on its way
    assert channel.sweep_ledgers() == 0
    client.rpush(QUEUE, raw)
    channel.basic_get(QUEUE, no_ack=False)  # delivered: kombu records it and the ledger forgets it
    time.sleep(GRACE + 0.1)
    assert channel.sweep_ledgers() == 0
    assert client.llen(QUEUE) == 0 and client.zcard(ledger_keys(QUEUE)[2]) == 0


def test_the_sweep_stops_at_the_oldest_message_still_queued(channel: Any) -> None:
    for n in range(3):
        publish(channel, f"queued {n}")
    time.sleep(GRACE + 0.1)
    assert channel.sweep_ledgers() == 0 and channel.sweep_ledgers() == 0
    assert redis_of(channel).llen(QUEUE) == 3 and len(ledgered(channel)) == 3
    assert redis_of(channel).zcard(ledger_keys(QUEUE)[2]) == 0


def test_a_restored_unacknowledged_message_is_ledgered_again(channel: Any) -> None:
    tag = publish(channel, "again")
    got = channel.basic_get(QUEUE, no_ack=False)
    assert got is not None and ledgered(channel) == []
    channel.qos.restore_by_tag(tag)  # what kombu's visibility timeout does to a dead worker's task
    assert ledgered(channel) == [tag.encode()] and redis_of(channel).llen(QUEUE) == 1


def test_a_message_taken_without_acknowledgement_leaves_no_ledger_entry(channel: Any) -> None:
    publish(channel, "no ack")
    assert channel.basic_get(QUEUE, no_ack=True) is not None
    assert ledgered(channel) == [] and redis_of(channel).hlen(ledger_keys(QUEUE)[1]) == 0


def test_purging_the_queue_clears_its_ledger(channel: Any) -> None:
    publish(channel, "a")
    publish(channel, "b")
    assert channel.queue_purge(QUEUE) == 2
    assert redis_of(channel).exists(*ledger_keys(QUEUE)) == 0


def test_entries_older_than_the_max_age_are_dropped(channel: Any) -> None:
    publish(channel, "ancient")
    redis_of(channel).rpop(QUEUE)
    channel.ledger_max_age = 0.2
    time.sleep(0.3)
    channel.sweep_ledgers()
    assert ledgered(channel) == [] and redis_of(channel).hlen(ledger_keys(QUEUE)[1]) == 0


def test_other_queues_are_not_ledgered(channel: Any) -> None:
    channel.queue_declare("iris-test-ledger.rows")
    channel.basic_publish(channel.prepare_message("rows"), exchange="", routing_key="iris-test-ledger.rows")
    try:
        assert redis_of(channel).llen("iris-test-ledger.rows") == 1
        assert redis_of(channel).exists(*ledger_keys("iris-test-ledger.rows")) == 0
    finally:
        redis_of(channel).delete("iris-test-ledger.rows")


def test_a_consumer_that_does_not_ledger_a_queue_still_removes_its_deliveries_and_sweeps_it(
    channel: Any, redis_base: str
) -> None:
    # A worker started with -Q on a queue another process ledgers (the kill drill's sweeper does this).
    url = f"{redis_base}/{LONELY_BROKER_DB}"
    with Connection(url, transport=Transport, transport_options={"visibility_timeout": GRACE}) as conn:
        other = conn.channel()
        publish(channel, "taken")
        got = other.basic_get(QUEUE, no_ack=False)
        assert got is not None and ledgered(channel) == []  # removed in kombu's MULTI: nobody hands it back
        other.basic_ack(got.delivery_tag)

        other.basic_consume(QUEUE, no_ack=False, callback=lambda message: None, consumer_tag="sweeper")
        tag = publish(channel, "lost on its way")
        assert redis_of(channel).rpop(QUEUE) is not None  # popped for a worker that never read the reply
        assert other.sweep_ledgers() == 0
        time.sleep(GRACE + 0.1)
        assert other.sweep_ledgers() == 1
        assert redis_of(channel).llen(QUEUE) == 1 and ledgered(channel) == [tag.encode()]
