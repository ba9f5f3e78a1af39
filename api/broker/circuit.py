"""Fail fast while Redis is down: after one failure, answer 503 at once for a moment instead of waiting."""

import time
from collections.abc import Callable

import redis
from kombu.exceptions import OperationalError

# What the Redis and kombu clients raise when the server is down, refuses, hangs or drops the connection.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OperationalError, OSError)


class Circuit:
    """Open for ``open_seconds`` after a Redis failure; then the next request tries Redis again.

    While open, requests get a 503 without touching Redis, so no request thread waits out a socket
    timeout during an outage. It is a plain float read and written by many threads: the worst a race
    does is let one extra request try Redis.
    """

    def __init__(self, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_seconds = open_seconds
        self._clock = clock
        self._until = 0.0

    def trip(self) -> None:
        """Record a Redis failure: refuse work for the next ``open_seconds``."""
        self._until = self._clock() + self.open_seconds

    def is_open(self) -> bool:
        """Say whether Redis failed within the last ``open_seconds``."""
        return self._until > 0.0 and self._clock() < self._until
