"""Listen on this API process's reply channel, where workers send each edge batch's answers in one message.

Anyone who may PUBLISH on the result backend's Redis can write to the channel, so each message is checked before
it is used (a few microseconds: the reply path is hot). One that is not a worker's reply is counted, logged (at
most one line a second, never its content) and skipped; the subscription stays, so no other reply is lost.
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.batching.batcher import WorkerError

log = logging.getLogger(__name__)

# Called with one answered batch: (task_ids, results or None, error or None).
# What delivering a reply whose shape passed parse_reply may still raise on odd values, or unconnected.
HAND_ON_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError)
OnReply = Callable[[Sequence[str], Sequence[Any] | None, WorkerError | None], None]
# A reply larger than this is refused unread; the API sizes it from BATCH_MAX_SIZE and BATCH_MAX_ROWS.
MAX_REPLY_BYTES = 4 * 1024 * 1024
# At most one log line about skipped messages per this many seconds.
REPORT_SECONDS = 1.0


class MalformedReply(ValueError):
    """A message on the reply channel that is not a worker's reply; its text names what is wrong, never the data."""


def max_reply_bytes(batch_max_size: int, batch_max_rows: int) -> int:
    """Return the largest reply to accept: a worker answers ~300 bytes a row (its label, probabilities, model)."""
    return 64 * 1024 + 1024 * max(batch_max_size, batch_max_rows)


def parse_reply(data: Any, max_bytes: int = MAX_REPLY_BYTES) -> tuple[list[str], list[Any] | None, WorkerError | None]:
    """Decode a worker's reply: ``{"ids": [...], "results": [...]}`` (one result per id) or
    ``{"ids": [...], "error": {"raised": ..., "message": ...}}``; raise MalformedReply for anything else."""
    if not isinstance(data, bytes):
        raise MalformedReply("not a byte string")
    if len(data) > max_bytes:
        raise MalformedReply(f"larger than {max_bytes} bytes")
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedReply("not JSON") from None
    if type(reply) is not dict:
        raise MalformedReply("not a JSON object")
    ids = reply.get("ids")
    if type(ids) is not list or not ids or not all(map(str.__instancecheck__, ids)):
        raise MalformedReply("ids is not a non-empty list of strings")
    error = reply.get("error")
    if error is not None:
        if type(error) is not dict:
            raise MalformedReply("error is not an object")
        return ids, None, WorkerError(str(error.get("raised")), str(error.get("message")))
    results = reply.get("results")
    if type(results) is not list or len(results) != len(ids):
        raise MalformedReply("results is not a list of one result per id")
    return ids, results, None


class ReplyListener:
    """One subscriber thread per process on a channel named for it; it resubscribes after Redis comes back."""

    def __init__(self, redis_url: str, channel_prefix: str, on_reply: OnReply | None = None,
                 max_bytes: int = MAX_REPLY_BYTES,
                 on_reject: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis_url = redis_url
        self._channel_prefix = channel_prefix
        self._on_reply = on_reply
        self._max_bytes = max_bytes
        self._on_reject = on_reject  # counts a skipped message in /metrics (iris_rejected_replies_total)
        self._clock = clock
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.channel = ""
        self.rejected = 0  # messages skipped by this process (written by the listener thread only)
        self._unreported = 0
        self._reported_at = -REPORT_SECONDS

    def connect(self, on_reply: OnReply) -> None:
        """Hand every reply to ``on_reply`` (the service, built after this listener)."""
        self._on_reply = on_reply

    def ensure_started(self) -> str:
        """Start listening in this process (after the server forks, never before); return the channel name."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._start()
                    self._pid = os.getpid()
        return self.channel

    def _start(self) -> None:
        self.channel = f"{self._channel_prefix}reply:{uuid.uuid4().hex}"
        self._subscribed = threading.Event()
        # No socket timeout: the listener waits for replies for as long as it takes. No retry with backoff
        # either: its own loop reconnects every 0.5 s, so it is back within that once Redis is.
        self._redis = redis.Redis.from_url(self._redis_url, socket_connect_timeout=1, health_check_interval=10,
                                           socket_keepalive=True, retry=Retry(NoBackoff(), 0))
        threading.Thread(target=self._listen, name="iris-reply-listener", daemon=True).start()
        self._subscribed.wait(1.0)  # the first request waits this long at most for the subscription

    def handle(self, data: Any) -> None:
        """Hand one message's answers to ``on_reply``, or skip it (counted and reported) if it is malformed."""
        try:
            ids, results, error = parse_reply(data, self._max_bytes)
        except MalformedReply as exc:
            self._reject(str(exc), len(data) if isinstance(data, bytes) else 0)
            return
        try:
            if self._on_reply is None:
                raise RuntimeError("the reply listener was started before connect()")
            self._on_reply(ids, results, error)
        except HAND_ON_ERRORS as exc:
            # One reply whose values break delivery must not end the subscription, which would lose every other
            # reply sent until it is back. A well-formed reply should never get here.
            self._reject(f"handing it on raised {type(exc).__name__}", len(data))

    def _reject(self, reason: str, size: int) -> None:
        """Count a skipped message; log one line per REPORT_SECONDS at most, naming what was wrong, not the data."""
        self.rejected += 1
        self._unreported += 1
        if self._on_reject is not None:
            self._on_reject()
        now = self._clock()
        if now - self._reported_at >= REPORT_SECONDS:
            log.warning("reply listener: skipped %d malformed message(s) on %s; the last: %s (%d bytes)",
                        self._unreported, self.channel, reason, size)
            self._unreported, self._reported_at = 0, now

    def _listen(self) -> None:
        """Hand every reply to ``on_reply``; after a failure, subscribe again every 0.5 s."""
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
                        self.handle(message["data"])
            except Exception as exc:
                # broad: should anything end this thread, the process would get no reply again. Requests
                # fall back to reading the result backend when their wait ends. One line per outage, not per retry.
                self._subscribed.clear()
                if not lost:
                    log.warning("reply listener lost Redis (%s); retrying every 0.5 s", exc)
                    lost = True
                time.sleep(0.5)
