"""Gather the rows of concurrent requests of one API process into edge batches; knows nothing of the network.

Each row keeps its own task id, so polling and the 504 poll URL work per request. A batch is handed to
``publish`` as soon as one of ``max_in_flight`` slots is free, it holds ``max_size`` rows, or its oldest row
has waited ``max_wait_ms``: batches grow with load and stay small when idle. ``deliver`` resolves a batch's
requests when its answer comes (api/replies.py calls it) and frees its slot.
"""

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

# Guards Pending._answered; held for a flag check only, so one lock for all pendings costs nothing.
_ANSWERING = threading.Lock()


class PublishFailed(Exception):
    """The batch holding this row could not be enqueued; nothing was queued."""


class TaskError(Exception):
    """The worker answered this row with an error (its ``raised`` name and message)."""

    def __init__(self, raised: str, message: str) -> None:
        super().__init__(f"{raised}: {message}")
        self.raised = raised


class Pending:
    """One request's row, its task id, its request id and, once answered, its result or error.

    ``trace`` is the request's span when tracing is on (api/tracing.py): opaque here, passed through untouched.
    """

    __slots__ = ("_answered", "_done", "enqueued", "error", "request_id", "result", "row", "task_id", "trace")

    def __init__(self, row: list[float], request_id: str | None, enqueued: float) -> None:
        self.task_id = str(uuid.uuid4())
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
# ``trace`` hook, each row's trace context follows as a fourth list (api/tracing.py's TracedPublish).
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
        self._max_in_flight = max_in_flight
        self._reply_timeout = reply_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._reset()

    def _reset(self) -> None:
        """Start empty: a forked process inherits no rows, slots or threads."""
        self._queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self._waiting: dict[str, Pending] = {}
        self._slots = threading.BoundedSemaphore(self._max_in_flight)
        # First task id of each batch holding a slot -> when it was sent; its answer frees the slot.
        self._in_flight: dict[str, float] = {}

    def submit(self, row: list[float], request_id: str | None = None) -> Pending:
        """Queue one row (of request ``request_id``) for the next batch and return its pending handle."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():  # after the server forks, never before
                    self._reset()
                    threading.Thread(target=self._flush_forever, name="iris-batch-flusher", daemon=True).start()
                    self._pid = os.getpid()
        return self.enqueue(row, request_id)

    def enqueue(self, row: list[float], request_id: str | None = None) -> Pending:
        """Queue one row without starting the flusher (tests drive :meth:`flush_once` themselves)."""
        pending = Pending(row, request_id, self._clock())
        if self._trace is not None:
            pending.trace = self._trace()
        self._waiting[pending.task_id] = pending
        self._queue.put(pending)
        return pending

    def forget(self, pending: Pending) -> None:
        """Stop routing an answer to a request that gave up waiting."""
        self._waiting.pop(pending.task_id, None)

    def flush_once(self) -> list[Pending]:
        """Wait for a row, take a batch and publish it; a failed publish fails its rows at once."""
        batch, slot = self._next_batch()
        key = batch[0].task_id
        if slot:
            self._in_flight[key] = self._clock()
        try:
            if self._trace is None:
                self._publish([p.row for p in batch], [p.task_id for p in batch], [p.request_id for p in batch])
            else:
                self._publish([p.row for p in batch], [p.task_id for p in batch], [p.request_id for p in batch],
                              [p.trace for p in batch])
        except Exception as exc:
            self._release(key)
            log.warning("cannot enqueue a batch of %d: %s", len(batch), exc)
            for pending in batch:
                self._waiting.pop(pending.task_id, None)
                pending.resolve(error=PublishFailed(str(exc)))
        return batch

    def deliver(self, task_ids: Sequence[str], results: Sequence[Any] | None = None,
                error: TaskError | None = None) -> None:
        """Resolve each waiting request of one answered batch and free the batch's slot."""
        if task_ids:
            self._release(task_ids[0])
        if results is not None and len(results) != len(task_ids):  # a malformed answer: let the rows time out
            log.warning("a reply holds %d results for %d rows; ignored", len(results), len(task_ids))
            return
        for index, task_id in enumerate(task_ids):
            pending = self._waiting.pop(task_id, None)
            if pending is not None:
                pending.resolve(result=results[index] if results is not None else None, error=error)

    def _next_batch(self) -> tuple[list[Pending], bool]:
        """Block for one row, wait for a free slot until the oldest row's wait is over, then take all
        rows waiting (up to ``max_size``); return them and whether a slot was taken."""
        batch = [self._queue.get()]
        self._expire_slots()
        slot = self._slots.acquire(timeout=max(0.0, batch[0].enqueued + self._max_wait - self._clock()))
        while len(batch) < self._max_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch, slot

    def _expire_slots(self) -> None:
        """Free the slots of batches whose answer never came (a worker died or the reply was missed)."""
        cutoff = self._clock() - self._reply_timeout
        for key, sent in list(self._in_flight.items()):
            if sent < cutoff:
                self._release(key)

    def _release(self, key: str) -> None:
        """Free one batch's slot, once."""
        if self._in_flight.pop(key, None) is not None:
            self._slots.release()

    def _flush_forever(self) -> None:
        """Publish batches as fast as slots free up."""
        while True:
            self.flush_once()
