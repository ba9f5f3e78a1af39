"""kombu's Redis transport, reusing one Redis client per connection pool instead of building one per call.

Written against kombu 5.7.0, whose ``Channel.conn_or_acquire`` calls the private ``Channel._create_client`` for
every publish and every ack. redis-py 6+ fills about 250 response callbacks into each new client: a large share
of the worker's time per message and of the API's publish (``load/bench_fastpaths.py``; docs/design.md, "Fast
paths", has the figures). A client over a connection pool is thread-safe, so one per pool is enough.

tests/unit/shared/transport/test_client_per_pool.py pins what this relies on: ``_create_client``'s signature,
that kombu builds every client there, and that kombu replaces ``Channel._pool`` / ``_async_pool`` after a fork
or on close. ``create_celery`` selects this transport for ``redis://`` and ``rediss://`` brokers while
FAST_PATHS is on, and shared/transport/brpop.py's (kombu's own, with one bug fixed) when it is off.
"""

from typing import Any

from kombu.transport import redis as kombu_redis

from shared.transport import brpop


class Channel(brpop.Channel):
    """A kombu Redis channel that caches its clients, one per connection pool (and guards its BRPOP)."""

    def _create_client(self, asynchronous: bool = False) -> Any:
        """Return this channel's client for the current pool, creating it once per pool."""
        pool = self.async_pool if asynchronous else self.pool
        cache: dict[bool, tuple[Any, Any]] = self.__dict__.setdefault("_iris_clients", {})
        cached = cache.get(asynchronous)
        # After a fork or a reconnect kombu replaces the pool: a client of the old pool must not be reused.
        if cached is None or cached[0] is not pool:
            cached = cache[asynchronous] = (pool, super()._create_client(asynchronous=asynchronous))
        return cached[1]


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
