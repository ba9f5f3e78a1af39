"""Admit new work only while the broker answers and the queue has room: a 503 then loses nothing."""

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from api.circuit import Circuit
from api.errors import QueueFull, QueueUnavailable

log = logging.getLogger(__name__)


class Admission:
    """The queue's depth, read from the broker at most every ``max_age`` seconds, and the admission rule."""

    def __init__(self, celery: Celery, queue: str, max_length: int, circuit: Circuit, max_age: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._celery = celery
        self._queue = queue
        self._max_length = max_length
        self._circuit = circuit
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None  # (when read, depth)
        self._probe: tuple[Any, Any] | None = None  # kept (connection, channel)

    @property
    def last_depth(self) -> int:
        """Return the depth last read (0 before the first reading)."""
        return self._last[1] if self._last is not None else 0

    def admit(self) -> None:
        """Raise QueueUnavailable while Redis is down and QueueFull while QUEUE_MAX_LENGTH tasks wait."""
        if self._circuit.is_open():
            raise QueueUnavailable()
        try:
            depth = self.depth()
        except Exception as exc:
            log.warning("broker unreachable: %s", exc)
            self._circuit.trip()
            raise QueueUnavailable() from None
        if depth >= self._max_length:
            raise QueueFull(depth)

    def depth(self, fresh: bool = False) -> int:
        """Return the queue's length; one thread refreshes a stale reading while the others use the last one,
        so a slow broker round trip never stalls the request path."""
        last = self._last
        if not fresh and last is not None and self._clock() - last[0] < self.max_age:
            return last[1]
        if not self._lock.acquire(blocking=fresh):
            return last[1] if last is not None else 0
        try:
            depth = self._read()
            self._last = (self._clock(), depth)
            return depth
        finally:
            self._lock.release()

    def _read(self) -> int:
        """Ask the broker, on a kept connection: opening one costs more than the question."""
        try:
            if self._probe is None:
                conn = self._celery.connection_for_read()
                self._probe = (conn, conn.default_channel)
            try:
                return int(self._probe[1].queue_declare(self._queue, passive=True).message_count)
            except ChannelError:
                # No such queue: nothing waits in it. AMQP closes a channel that asks about one; Redis keeps
                # it, and there an empty queue has no key, so this is the idle case: keep the connection.
                if self._probe[0].transport.driver_type == "amqp":
                    self.close()
                return 0
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Drop the kept connection, so the next reading opens a fresh one."""
        kept, self._probe = self._probe, None
        if kept is not None:
            with contextlib.suppress(Exception):
                kept[0].release()
