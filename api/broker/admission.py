"""Admit new work only while the broker answers and the queues have room: a 503 then loses nothing.

Work goes to two queues: ``iris`` (async tasks, and the resends of sync rows and batch requests whose wait ended)
and ``iris.rows`` (edge batches of sync rows, and batch requests' tables). QUEUE_MAX_LENGTH bounds their sum, and
on Redis QUEUE_MAX_MB bounds the memory they take (read with ``MEMORY USAGE ... SAMPLES 0`` in the same round trip:
exact, and it costs Redis a walk over a list's nodes, not its messages), since one message may hold one row or a
thousand.

The broker is asked at most every ``max_age`` seconds, so each process also counts what it admitted since its
last reading and adds it: a burst within one reading's life cannot overrun the bound on its own. When that count
alone would refuse, the broker is asked again first (at most every ``recheck`` seconds), since workers may have
taken those messages already. What can still pass the bound (docs/security.md): messages whose send raced a reading, the
resends of requests waiting when the queues filled, and other processes' admissions within one ``max_age``.
"""

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import redis as kombu_redis

from api.broker.circuit import REDIS_DOWN, Circuit
from api.errors import QueueFull, QueueUnavailable

log = logging.getLogger(__name__)


class Admission:
    """The queues' depths, read from the broker at most every ``max_age`` seconds, and the admission rule."""

    def __init__(self, celery: Celery, queues: str | Sequence[str], max_length: int, circuit: Circuit,
                 max_age: float = 0.25, clock: Callable[[], float] = time.monotonic, recheck: float = 0.01,
                 fast: bool = True, max_bytes: int = 0) -> None:
        self._celery = celery
        self._queues = (queues,) if isinstance(queues, str) else tuple(queues)
        self._max_length = max_length
        self._max_bytes = max_bytes  # 0: no byte bound
        self.last_bytes = 0  # the queues' memory at the last reading (Redis with fast paths only; else 0)
        self._circuit = circuit
        self._guard = circuit.guard("reading the queue depth")
        self.max_age = max_age
        self.recheck = recheck
        self._clock = clock
        # One LLEN pipeline for every queue on a Redis broker (one round trip); FAST_PATHS=0: kombu's passive
        # queue_declare, two round trips per queue.
        self._fast = fast
        self._lock = threading.Lock()
        self._last: tuple[float, tuple[int, ...]] | None = None  # (when read, depth of each queue)
        self._probe: tuple[Any, Any] | None = None  # kept (connection, channel)
        self._counting = threading.Lock()
        self._admitted = 0  # messages admitted (or resent) by this process since the last reading began

    def admit(self) -> None:
        """Raise QueueUnavailable while Redis is down and QueueFull once QUEUE_MAX_LENGTH messages wait; else
        count one more message."""
        if self._circuit.is_open():
            raise QueueUnavailable()
        with self._guard:
            depth = self.depth()
            if depth + self._admitted >= self._max_length and self._admitted:
                # This process's own count decides: ask again, for workers may have taken those messages.
                depth = self.depth(max_age=self.recheck)
        if depth + self._admitted >= self._max_length:
            raise QueueFull(depth + self._admitted)
        if self._max_bytes and self.last_bytes >= self._max_bytes:
            raise QueueFull(depth, self.last_bytes / 1e6)
        self.count()

    def count(self, messages: int = 1) -> None:
        """Add messages this process queued to its estimate until the next reading (a resend needs no admission)."""
        with self._counting:
            self._admitted += messages

    def depth(self, fresh: bool = False, max_age: float | None = None) -> int:
        """Return the queues' length together, read at most ``max_age`` (default: ``self.max_age``) seconds ago.

        One thread refreshes a stale reading while the others use the last one, so a slow broker round trip never
        stalls the request path; ``fresh`` (or a ``max_age`` shorter than the default) waits for a reading instead.
        """
        return sum(self._depths(fresh, self.max_age if max_age is None else max_age))

    def depths(self, fresh: bool = False) -> dict[str, int]:
        """Return {queue: length}, read as :meth:`depth` reads it."""
        return dict(zip(self._queues, self._depths(fresh, self.max_age), strict=True))

    def _depths(self, fresh: bool, max_age: float) -> tuple[int, ...]:
        last = self._last
        if not fresh and last is not None and self._clock() - last[0] < max_age:
            return last[1]
        wait = fresh or max_age < self.max_age
        if not self._lock.acquire(blocking=wait):
            return last[1] if last is not None else (0,) * len(self._queues)
        try:
            if wait and self._circuit.is_open():
                # The reading this thread waited for failed: asking again would wait as long, once per waiter.
                raise QueueUnavailable()
            last = self._last  # another thread may have read while this one waited
            if not fresh and last is not None and self._clock() - last[0] < max_age:
                return last[1]
            counted = self._admitted  # sent before the reading: in it, or on their way
            depths = self._read()
            with self._counting:
                self._admitted -= counted
            self._last = (self._clock(), depths)
            return depths
        finally:
            self._lock.release()

    def _read(self) -> tuple[int, ...]:
        """Ask the broker, on a kept connection: opening one costs more than the question."""
        try:
            channel = self._channel()
            if self._fast and isinstance(channel, kombu_redis.Channel):
                return self._llen(channel)
            return tuple(self._declared(queue) for queue in self._queues)
        except REDIS_DOWN:
            self.close()
            raise

    def _channel(self) -> Any:
        """Return the kept channel, connecting first if there is none."""
        if self._probe is None:
            conn = self._celery.connection_for_read()
            self._probe = (conn, conn.default_channel)
        return self._probe[1]

    def _llen(self, channel: kombu_redis.Channel) -> tuple[int, ...]:
        """Read every queue's length in one round trip: kombu keeps a queue in one list per priority step, which
        its passive queue_declare reads with two round trips (EXISTS, then LLEN) per queue. With a byte bound, the
        same round trip reads the lists' memory into ``last_bytes``."""
        steps = channel.priority_steps
        keys = [channel._q_for_pri(queue, priority) for queue in self._queues for priority in steps]
        with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            if self._max_bytes:
                for key in keys:
                    pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
            answers = pipe.execute()
        sizes = answers[:len(keys)]
        self.last_bytes = sum(int(size or 0) for size in answers[len(keys):])  # None: no such list
        return tuple(sum(sizes[i:i + len(steps)]) for i in range(0, len(sizes), len(steps)))

    def _declared(self, queue: str) -> int:
        """Read one queue's length with kombu's passive queue_declare (the documented path, and AMQP's)."""
        try:
            return int(self._channel().queue_declare(queue, passive=True).message_count)
        except ChannelError:
            # No such queue: nothing waits in it. AMQP closes a channel that asks about one (the next question
            # opens a fresh one); Redis keeps it, and there an empty queue has no key: the idle case.
            if self._probe is not None and self._probe[0].transport.driver_type == "amqp":
                self.close()
            return 0

    def close(self) -> None:
        """Drop the kept connection, so the next reading opens a fresh one."""
        kept, self._probe = self._probe, None
        if kept is not None:
            with contextlib.suppress(*REDIS_DOWN):
                kept[0].release()
