"""Gather concurrent requests of one API process into one Celery task, with one reply listener.

Each request keeps its own task id: the worker stores every row's result under that id (so polling
and the 504 poll URL work) and also sends the whole batch's answers on this process's reply channel,
where one listener thread wakes the waiting requests. Several batches are in flight at once: the
flusher never waits for an answer before it sends the next batch.
"""

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


class Pending:
    """One request's row, its task id, its request id and, once answered, its result or error."""

    __slots__ = ("_done", "enqueued", "error", "request_id", "result", "row", "task_id")

    def __init__(self, row: list[float], request_id: str | None = None) -> None:
        self.task_id = str(uuid.uuid4())
        self.row = row
        self.request_id = request_id
        self.enqueued = time.monotonic()
        # A bare lock, held until the answer comes: a fraction of threading.Event's cost on the hot path.
        self._done = threading.Lock()
        self._done.acquire()
        self.result: Any = None
        self.error: dict[str, str] | None = None

    def resolve(self, result: Any = None, error: dict[str, str] | None = None) -> None:
        """Hand the answer to the waiting request thread (once; later answers are ignored)."""
        self.result, self.error = result, error
        with contextlib.suppress(RuntimeError):  # already resolved
            self._done.release()

    def wait(self, timeout: float) -> bool:
        """Block until resolved or ``timeout`` seconds pass; return whether it was resolved."""
        return self._done.acquire(timeout=timeout)


# Publish a batch: (rows, task_ids, reply_channel, request_ids) -> None; raises when the broker is unreachable.
Publisher = Callable[[list[list[float]], list[str], str, list[str | None]], None]


class EdgeBatcher:
    """Send a batch as soon as one of ``max_in_flight`` slots is free, it holds ``max_size`` rows, or its
    oldest row has waited ``max_wait_ms``: batches grow with load and stay small when idle."""

    def __init__(self, publish: Publisher, redis_url: str, channel_prefix: str, max_size: int,
                 max_wait_ms: float, max_in_flight: int, reply_timeout: float) -> None:
        self._publish = publish
        self._redis_url = redis_url
        self._channel_prefix = channel_prefix
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000.0
        self._max_in_flight = max_in_flight
        self._reply_timeout = reply_timeout
        self._lock = threading.Lock()
        self._pid: int | None = None

    def _start(self) -> None:
        """Start the flusher and the listener in this process (after the server forks, never before)."""
        self._queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self._waiting: dict[str, Pending] = {}
        self.channel = f"{self._channel_prefix}reply:{uuid.uuid4().hex}"
        self._subscribed = threading.Event()
        self._slots = threading.BoundedSemaphore(self._max_in_flight)
        # First task id of each batch holding a slot -> when it was sent; the reply frees the slot.
        self._in_flight: dict[str, float] = {}
        # No socket timeout: the listener waits for replies for as long as it takes. No retry with backoff
        # either: its own loop reconnects every 0.5 s, so it is back within that once Redis is.
        self._redis = redis.Redis.from_url(self._redis_url, socket_connect_timeout=1, health_check_interval=10,
                                           socket_keepalive=True, retry=Retry(NoBackoff(), 0))
        threading.Thread(target=self._listen, name="iris-reply-listener", daemon=True).start()
        threading.Thread(target=self._flush_forever, name="iris-batch-flusher", daemon=True).start()
        self._subscribed.wait(1.0)  # the first request waits this long at most for the subscription

    def submit(self, row: list[float], request_id: str | None = None) -> Pending:
        """Queue one row (of request ``request_id``) for the next batch and return its pending handle."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._start()
                    self._pid = os.getpid()
        pending = Pending(row, request_id)
        self._waiting[pending.task_id] = pending
        self._queue.put(pending)
        return pending

    def forget(self, pending: Pending) -> None:
        """Stop routing a reply to a request that gave up waiting."""
        self._waiting.pop(pending.task_id, None)

    def _next_batch(self) -> tuple[list[Pending], bool]:
        """Block for one row, wait for a free slot until the oldest row's wait is over, then take all
        rows waiting (up to ``max_size``); return them and whether a slot was taken."""
        batch = [self._queue.get()]
        self._expire_slots()
        slot = self._slots.acquire(timeout=max(0.0, batch[0].enqueued + self._max_wait - time.monotonic()))
        while len(batch) < self._max_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch, slot

    def _expire_slots(self) -> None:
        """Free the slots of batches whose reply never came (a worker died or the reply was missed)."""
        cutoff = time.monotonic() - self._reply_timeout
        for key, sent in list(self._in_flight.items()):
            if sent < cutoff:
                self._release(key)

    def _release(self, key: str) -> None:
        """Free one batch's slot, once."""
        if self._in_flight.pop(key, None) is not None:
            self._slots.release()

    def _flush_forever(self) -> None:
        """Send batches as fast as slots free up; a failed publish fails its rows at once."""
        while True:
            batch, slot = self._next_batch()
            key = batch[0].task_id
            if slot:
                self._in_flight[key] = time.monotonic()
            try:
                self._publish([p.row for p in batch], [p.task_id for p in batch], self.channel,
                              [p.request_id for p in batch])
            except Exception as exc:
                self._release(key)
                log.warning("cannot enqueue a batch of %d: %s", len(batch), exc)
                error = {"raised": "QueueUnavailable", "message": "the task queue is unreachable"}
                for pending in batch:
                    self._waiting.pop(pending.task_id, None)
                    pending.resolve(error=error)

    def _listen(self) -> None:
        """Wake the requests whose rows a worker answered; resubscribe after Redis comes back."""
        lost = False
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._subscribed.set()
                if lost:
                    log.warning("reply listener: subscribed again")
                    lost = False
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(orjson.loads(message["data"]))
            except Exception as exc:
                # Requests fall back to reading the result backend when their wait ends. One line per outage,
                # not one per retry.
                self._subscribed.clear()
                if not lost:
                    log.warning("reply listener lost Redis (%s); retrying every 0.5 s", exc)
                    lost = True
                time.sleep(0.5)

    def _deliver(self, reply: dict[str, Any]) -> None:
        """Resolve each waiting request named in a worker's reply."""
        ids = reply.get("ids") or [""]
        self._release(ids[0])
        results = reply.get("results")
        error = reply.get("error")
        for index, task_id in enumerate(ids):
            pending = self._waiting.pop(task_id, None)
            if pending is not None:
                pending.resolve(result=results[index] if results is not None else None, error=error)
