"""Gather the rows of concurrent requests of one API process into edge batches; knows nothing of the network.

Each row keeps its own task id, so polling and the 504 poll URL work per request. A batch is handed to
``publish`` as soon as one of ``max_in_flight`` slots is free, holding every row waiting (up to ``max_size``),
or without a slot once its oldest row has waited ``max_wait_ms``: batches grow with load and stay small when
idle. Whichever thread finds a slot free sends the batch itself, with no hand-off: a request that finds one
free and nothing waiting publishes its own row, and ``deliver``, which resolves a batch's requests when its
answer comes (api/batching/replies.py calls it), first sends the rows that waited for that batch's slot. A flusher
thread, which nobody wakes, looks every ``max_wait`` for rows that waited that long and sends them without a
slot, and frees the slots of answers that never came.
"""

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from api.batching import task_ids
from api.errors import QueueFull

log = logging.getLogger(__name__)

# Guards Pending._answered; held for a flag check only, so one lock for all pendings costs nothing.
_ANSWERING = threading.Lock()


class PublishFailed(Exception):
    """The batch holding this row could not be enqueued; nothing was queued. ``refused``: the broker answered no
    (the publish raised QueueFull) rather than failing."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class WorkerError(Exception):
    """The worker answered this row with an error (its ``raised`` name and message)."""

    def __init__(self, raised: str, message: str) -> None:
        super().__init__(f"{raised}: {message}")
        self.raised = raised


class Pending:
    """One request's row (or a batch request's rows), its task id, its request id and, once answered, its result
    or error.

    ``trace`` is the request's span when tracing is on (api/observability/tracing.py): opaque here, passed
    through untouched.
    """

    __slots__ = ("_answered", "_done", "enqueued", "error", "request_id", "result", "row", "task_id", "trace")

    def __init__(self, row: Any, request_id: str | None, enqueued: float) -> None:
        self.task_id = task_ids.uuid4()
        self.row = row
        self.request_id = request_id
        self.enqueued = enqueued
        # A bare lock, held until the answer comes: a fraction of threading.Event's cost on the hot path.
        self._done = threading.Lock()
        self._done.acquire()
        self._answered = False
        self.result: Any = None
        self.error: Exception | None = None
        self.trace: Any = None

    def resolve(self, result: Any = None, error: Exception | None = None) -> None:
        """Hand the answer to the waiting request thread (once; later answers are ignored)."""
        with _ANSWERING:  # check and mark in one step: the flusher and the listener may answer at once
            if self._answered:
                return
            self._answered = True
        self.result, self.error = result, error
        self._done.release()

    def wait(self, timeout: float) -> bool:
        """Block until resolved or ``timeout`` seconds pass; return whether it was resolved."""
        return self._done.acquire(timeout=timeout)


# Publish one batch: (rows, task_ids, request_ids) -> None; raises when the broker is unreachable. With a
# ``trace`` hook, each row's trace context follows as a fourth list (api/observability/tracing.py's TracedPublish).
Publisher = Callable[..., None]


class EdgeBatcher:
    """Batch rows for ``publish`` by size, wait and free in-flight slots; see the module docstring."""

    def __init__(self, publish: Publisher, max_size: int, max_wait_ms: float, max_in_flight: int,
                 reply_timeout: float, clock: Callable[[], float] = time.monotonic,
                 trace: Callable[[], Any] | None = None) -> None:
        self._publish = publish
        self._trace = trace  # returns the current request's trace context; None while tracing is off
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000.0
        self._poll = self._max_wait if self._max_wait > 0 else 0.01  # how often the flusher looks for rows
        self._max_in_flight = max_in_flight
        self._reply_timeout = reply_timeout
        self._clock = clock
        self._start_lock = threading.Lock()
        self._pid: int | None = None
        self._reset()

    def _reset(self) -> None:
        """Start empty: a forked process inherits no rows, slots or threads."""
        # One lock for the rows and the slots; the flusher waits on it for rows to time.
        self._cond = threading.Condition(threading.Lock())
        self._rows: deque[Pending] = deque()
        self._waiting: dict[str, Pending] = {}
        self._free = self._max_in_flight
        # First task id of each batch holding a slot -> when it was sent; its answer frees the slot.
        self._in_flight: dict[str, float] = {}

    def submit(self, row: list[float], request_id: str | None = None) -> Pending:
        """Queue one row (of request ``request_id``) and send it now if a slot is free; return its handle."""
        if self._pid != os.getpid():
            with self._start_lock:
                if self._pid != os.getpid():  # after the server forks, never before
                    self._reset()
                    threading.Thread(target=self._flush_forever, name="iris-batch-flusher", daemon=True).start()
                    self._pid = os.getpid()
        pending = self._pending(row, request_id)
        with self._cond:
            self._rows.append(pending)
            # No slot free: the row waits for an answer to free one, and the flusher, which looks every
            # max_wait, times it. Not woken here: that wake-up cost a context switch per batch.
            batch = self._take_with_slot()
            if batch is None and self._max_wait <= 0:  # rows may not wait at all: send without a slot
                batch = self._take()
        if batch is not None:
            self._send(batch)
        return pending

    def _pending(self, row: list[float], request_id: str | None) -> Pending:
        pending = Pending(row, request_id, self._clock())
        if self._trace is not None:
            pending.trace = self._trace()
        self._waiting[pending.task_id] = pending
        return pending

    def forget(self, pending: Pending) -> None:
        """Stop routing an answer to a request that gave up waiting."""
        self._waiting.pop(pending.task_id, None)

    def flush_once(self) -> list[Pending]:
        """Wait for a row that can go, with a free slot or past its wait, send its batch and return it.

        With no row waiting it looks again every ``max_wait`` (rows join without waking it), so a row waits at
        most about ``max_wait`` beyond its own for a slot.
        """
        with self._cond:
            while True:
                if not self._rows:
                    self._cond.wait(self._poll)
                    continue
                self._expire_slots()
                batch = self._take_with_slot()
                if batch is not None:
                    break
                remaining = self._rows[0].enqueued + self._max_wait - self._clock()
                if remaining <= 0:  # every slot is taken and the oldest row waited long enough: send anyway
                    batch = self._take()
                    break
                self._cond.wait(remaining)
        self._send(batch)
        return batch

    def deliver(self, task_ids: Sequence[str], results: Sequence[Any] | None = None,
                error: WorkerError | None = None) -> None:
        """Free the answered batch's slot, send the rows that waited for one, then resolve each of its requests."""
        if task_ids:
            with self._cond:
                self._release(task_ids[0])
                batch = self._take_with_slot()
            if batch is not None:  # first: the worker is waiting for work, and these rows for the worker
                self._send(batch)
        if results is not None and len(results) != len(task_ids):  # a malformed answer: let the rows time out
            log.warning("a reply holds %d results for %d rows; ignored", len(results), len(task_ids))
            return
        for index, task_id in enumerate(task_ids):
            pending = self._waiting.pop(task_id, None)
            if pending is not None:
                pending.resolve(result=results[index] if results is not None else None, error=error)

    def fail(self, task_ids: Sequence[str], error: Exception) -> None:
        """Fail a batch's rows as never queued and free its slot, if it held one: its publish raised, or Redis
        refused it after ``publish`` returned. A batch the broker refused (QueueFull) is not logged here: the
        publisher logged it, at most once a second."""
        if task_ids:
            with self._cond:
                self._release(task_ids[0])  # a batch sent without a slot is not in _in_flight: nothing to free
        refused = isinstance(error, QueueFull)
        if not refused:
            log.warning("cannot enqueue a batch of %d: %s", len(task_ids), error)
        for task_id in task_ids:
            pending = self._waiting.pop(task_id, None)
            if pending is not None:
                pending.resolve(error=PublishFailed(str(error), refused))

    def _take_with_slot(self) -> list[Pending] | None:
        """Take a free slot and the rows waiting (up to ``max_size``) for it; None if none waits or none is free.

        Called with the lock held.
        """
        if not self._rows or self._free <= 0:
            return None
        self._free -= 1
        batch = self._take()
        self._in_flight[batch[0].task_id] = self._clock()
        return batch

    def _take(self) -> list[Pending]:
        """Take the oldest rows waiting, up to ``max_size`` (the lock held)."""
        rows = self._rows
        return [rows.popleft() for _ in range(min(len(rows), self._max_size))]

    def _send(self, batch: list[Pending]) -> None:
        """Publish one batch; a failed publish fails its rows at once and frees its slot."""
        try:
            if self._trace is None:
                self._publish([p.row for p in batch], [p.task_id for p in batch], [p.request_id for p in batch])
            else:
                self._publish([p.row for p in batch], [p.task_id for p in batch], [p.request_id for p in batch],
                              [p.trace for p in batch])
        except Exception as exc:  # broad: the flusher thread must outlive any failure, and the rows learn of it now
            self.fail([p.task_id for p in batch], exc)

    def _expire_slots(self) -> None:
        """Free the slots of batches whose answer never came (a worker died or the reply was missed; lock held)."""
        cutoff = self._clock() - self._reply_timeout
        for key, sent in list(self._in_flight.items()):
            if sent < cutoff:
                self._release(key)

    def _release(self, key: str) -> None:
        """Free one batch's slot, once (the lock held)."""
        if self._in_flight.pop(key, None) is not None:
            self._free += 1

    def _flush_forever(self) -> None:
        """Send the batches whose rows waited for a slot long enough, or found one freed by an expiry."""
        while True:
            self.flush_once()
