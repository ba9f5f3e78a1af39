"""The kombu bypass: one Redis client per connection pool, and the kombu 5.7 internals that makes it work."""

import ast
import inspect
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
from kombu.transport import redis as kombu_redis

from shared.celery_app import create_celery
from shared.settings import Settings
from shared.transport import brpop, no_ack
from shared.transport.client_per_pool import Channel, Transport
from tests.unit.shared.fake_redis import open_channel


@pytest.fixture
def bypass_channel(fake_redis: type) -> Iterator[Any]:
    yield from open_channel(Transport)


@pytest.fixture
def kombu_channel(fake_redis: type) -> Iterator[Any]:
    yield from open_channel(kombu_redis.Transport)


def publish_get_ack(channel: Any, messages: int) -> None:
    """Send ``messages`` messages through ``channel``, then get and acknowledge each: a worker's client use."""
    for n in range(messages):
        channel.basic_publish(channel.prepare_message(f"body {n}"), exchange="", routing_key="q")
    for n in range(messages):
        got = channel.basic_get("q", no_ack=False)
        assert got.body == f"body {n}".encode()
        channel.basic_ack(got.delivery_tag)


def test_kombu_is_the_5_7_series_the_bypass_was_written_against() -> None:
    assert kombu.__version__.startswith("5.7."), "re-run this contract against the new kombu, then update the pin"


def test_create_client_keeps_the_signature_the_override_has() -> None:
    params = inspect.signature(kombu_redis.Channel._create_client).parameters
    assert list(params) == ["self", "asynchronous"] and params["asynchronous"].default is False


def test_kombu_builds_redis_clients_only_in_create_client() -> None:
    # Were a client built anywhere else, caching _create_client would leave that path paying per call.
    tree = ast.parse(inspect.getsource(kombu_redis))
    builders: set[str] = set()
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            for call in ast.walk(function):
                if isinstance(call, ast.Call) and getattr(call.func, "attr", getattr(call.func, "id", None)) in (
                        "Client", "Redis", "StrictRedis", "PrefixedStrictRedis"):
                    builders.add(function.name)
    assert builders == {"_create_client"}


def test_kombu_builds_a_client_per_publish_get_and_ack(kombu_channel: Any, fake_redis: Any) -> None:
    before = len(fake_redis.built)
    publish_get_ack(kombu_channel, messages=3)
    # What the bypass saves: kombu's publish, get and ack each build a client (and so does its unacked record).
    assert len(fake_redis.built) - before >= 3 * 3


def test_the_bypass_builds_no_client_per_message(bypass_channel: Any, fake_redis: Any) -> None:
    assert isinstance(bypass_channel, Channel)
    publish_get_ack(bypass_channel, messages=3)
    # One client per pool: kombu's sync pool for publish and ack, its async pool for channel.client.
    assert len(fake_redis.built) == 2
    assert {client.connection_pool for client in fake_redis.built} == {bypass_channel.pool, bypass_channel.async_pool}


def test_kombus_client_paths_all_reach_the_cached_client(bypass_channel: Any) -> None:
    first = bypass_channel._create_client()
    with bypass_channel.conn_or_acquire() as client:
        assert client is first
    assert bypass_channel._refresh_binding.registered_client is first
    assert bypass_channel.client is bypass_channel._create_client(asynchronous=True) is not first


def test_a_pool_kombu_replaces_gets_a_new_client(bypass_channel: Any) -> None:
    first, old_pool = bypass_channel._create_client(), bypass_channel.pool
    bypass_channel._after_fork()  # kombu's own after-fork hook: drops both pools
    second = bypass_channel._create_client()
    assert bypass_channel.pool is not old_pool
    assert second is not first and second.connection_pool is bypass_channel.pool
    assert bypass_channel._create_client() is second


def test_redis_brokers_use_the_bypass_transport_with_fast_paths_on() -> None:
    for url in ("redis://127.0.0.1:6399/0", "rediss://127.0.0.1:6399/0"):
        app = create_celery(Settings(celery_broker_url=url, fast_paths=True))
        transport = type(app.connection_for_write().transport)
        assert transport is no_ack.Transport  # which builds on this module's channel
        assert issubclass(transport.Channel, Channel)


def test_fast_paths_off_leaves_kombus_own_redis_transport_with_only_the_brpop_guard() -> None:
    for url in ("redis://127.0.0.1:6399/0", "rediss://127.0.0.1:6399/0"):
        app = create_celery(Settings(celery_broker_url=url, fast_paths=False))
        transport = type(app.connection_for_write().transport)
        assert transport is brpop.Transport
        assert transport.Channel._create_client is kombu_redis.Channel._create_client


def test_other_brokers_keep_their_own_transport() -> None:
    app = create_celery(Settings(celery_broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert not isinstance(app.connection_for_write().transport, kombu_redis.Transport)
