"""The API's one policy for "Redis is down": a guard around every Redis call, and a circuit that fails fast after.

A guarded call that raises one of ``REDIS_DOWN`` logs once per outage, trips the circuit and raises
QueueUnavailable (a 503 in the envelope); while the circuit is open, callers answer 503 at once instead of
waiting out a socket timeout. Any other error passes through untouched.
"""

import logging
import time
from collections.abc import Callable
from types import TracebackType

import redis
from kombu.exceptions import OperationalError

from api.errors import QueueUnavailable
from shared.redact import redact

log = logging.getLogger(__name__)

# What redis-py and kombu raise when the server is down, hangs, drops the connection or refuses a command
# (a full Redis under noeviction answers OOM; a changed password, NOAUTH): each is "the queue cannot take this".
REDIS_DOWN = (redis.RedisError, OperationalError, OSError)


class Circuit:
    """Open for ``open_seconds`` after a Redis failure; then the next request tries Redis again.

    While open, requests get a 503 without touching Redis, so no request thread waits out a socket
    timeout during an outage. Its state is plain attributes read and written by many threads: the worst a race
    does is let one extra request try Redis, or log an outage's first failure twice.
    """

    def __init__(self, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_seconds = open_seconds
        self._clock = clock
        self._until = 0.0
        self._down = False  # an outage's first failure was logged; the next guarded success ends the outage

    def trip(self) -> None:
        """Record a Redis failure: refuse work for the next ``open_seconds``."""
        self._until = self._clock() + self.open_seconds

    def is_open(self) -> bool:
        """Say whether Redis failed within the last ``open_seconds``."""
        return self._until > 0.0 and self._clock() < self._until

    def failed(self, doing: str, exc: BaseException) -> None:
        """Record one Redis failure while ``doing``: log it if it starts an outage, and trip the circuit."""
        if not self._down:
            self._down = True
            log.warning("Redis is down (%s): %s", doing, redact(str(exc)) or type(exc).__name__)
        self.trip()

    def guard(self, doing: str, message: str = QueueUnavailable.default) -> "Guard":
        """Return the guard for one kind of Redis call (build it once; it is reused for every call)."""
        return Guard(self, doing, message)


class Guard:
    """``with guard:`` turns a Redis failure into QueueUnavailable(``message``), the circuit tripped."""

    __slots__ = ("_circuit", "_doing", "_message")

    def __init__(self, circuit: Circuit, doing: str, message: str) -> None:
        self._circuit = circuit
        self._doing = doing
        self._message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if kind is None:
            self._circuit._down = False
        elif exc is not None and issubclass(kind, REDIS_DOWN):
            self._circuit.failed(self._doing, exc)
            raise QueueUnavailable(self._message) from None
