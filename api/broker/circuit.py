"""The API's one policy for "Redis is down": a guard around every Redis call, and a circuit that fails fast after.

A guarded call that raises one of ``REDIS_DOWN`` logs once per outage, trips the circuit and raises
QueueUnavailable (a 503 in the envelope); while the circuit is open, callers answer 503 at once instead of
waiting out a socket timeout. A publish the broker refused (:func:`refused`: RabbitMQ's basic.nack under publisher
confirms) is no outage: it raises QueueFull, logs at most once a second and leaves the circuit closed. Any other
error passes through untouched.
"""

import logging
import time
from collections.abc import Callable
from types import TracebackType

import redis
from amqp.exceptions import MessageNacked
from kombu.exceptions import OperationalError

from api.errors import QueueFull, QueueUnavailable
from shared.redact import redact

log = logging.getLogger(__name__)

# What redis-py and kombu raise when the server is down, hangs, drops the connection or refuses a command
# (a full Redis under noeviction answers OOM; a changed password, NOAUTH): each is "the queue cannot take this".
REDIS_DOWN = (redis.RedisError, OperationalError, OSError)
# REDIS_DOWN and py-amqp's MessageNacked, which a publish without kombu's retry raises bare when the broker nacks it.
DOWN_OR_REFUSED = (*REDIS_DOWN, MessageNacked)
# A refusal is logged at most once per this many seconds, with the number refused since the last line.
REFUSAL_LOG_SECONDS = 1.0


def refused(exc: BaseException) -> bool:
    """Tell whether ``exc`` is the broker refusing one publish rather than failing: an answer, not an outage.

    Under publisher confirms RabbitMQ answers a publish its queue will not take (a ``max-length`` or
    ``max-length-bytes`` policy with ``overflow: reject-publish``) with basic.nack, and py-amqp raises
    MessageNacked. A bare publish raises it as is; Celery's retrying publish (kombu's ``ensure``) raises kombu's
    OperationalError ``from`` it. Only explicit causes are followed, never ``__context__``: kombu's retry
    reconnects while handling a nack, so a connection refused then holds the nack as its context, and that is an
    outage. Called on the failure path only.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # kombu wraps once; the bound keeps a cyclic chain from looping
        if seen is None:
            return False
        if isinstance(seen, MessageNacked):
            return True
        seen = seen.__cause__
    return False


class Circuit:
    """Open for ``open_seconds`` after a Redis failure; then the next request tries Redis again.

    While open, requests get a 503 without touching Redis, so no request thread waits out a socket
    timeout during an outage. Its state is plain attributes read and written by many threads: the worst a race
    does is let one extra request try Redis, log an outage's first failure twice, or miscount a refusal line.
    """

    def __init__(self, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_seconds = open_seconds
        self._clock = clock
        self._until = 0.0
        self._down = False  # an outage's first failure was logged; the next guarded success ends the outage
        self._refusals = 0  # publishes the broker refused since the last line that said so
        self._refusal_logged = float("-inf")  # when that line was written

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

    def refused(self, doing: str) -> None:
        """Record one publish the broker refused while ``doing``: the broker answered, so the circuit stays
        closed (the next publish that fits is served); log at most once per ``REFUSAL_LOG_SECONDS``, no trace."""
        self._refusals += 1
        now = self._clock()
        if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
            count, self._refusals, self._refusal_logged = self._refusals, 0, now
            log.warning("the broker refused %d publish%s (%s): a queue is at a bound the broker enforces (a "
                        "RabbitMQ max-length or max-length-bytes policy with overflow reject-publish); "
                        "answering 503 QueueFull", count, "" if count == 1 else "es", doing)

    def guard(self, doing: str, message: str = QueueUnavailable.default) -> "Guard":
        """Return the guard for one kind of Redis call (build it once; it is reused for every call)."""
        return Guard(self, doing, message)


class Guard:
    """``with guard:`` turns a Redis failure into QueueUnavailable(``message``), the circuit tripped, and a publish
    the broker refused into QueueFull, the circuit left closed."""

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
        elif exc is not None and issubclass(kind, DOWN_OR_REFUSED):
            if refused(exc):
                self._circuit.refused(self._doing)
                raise QueueFull() from None
            self._circuit.failed(self._doing, exc)
            raise QueueUnavailable(self._message) from None
