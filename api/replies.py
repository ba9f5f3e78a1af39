"""Listen on this API process's reply channel, where workers send each edge batch's answers in one message."""

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

from api.batcher import TaskError

log = logging.getLogger(__name__)

# Called with one answered batch: (task_ids, results or None, error or None).
OnReply = Callable[[Sequence[str], Sequence[Any] | None, TaskError | None], None]


def parse_reply(data: bytes) -> tuple[list[str], list[Any] | None, TaskError | None]:
    """Decode a worker's reply: ``{"ids": [...], "results": [...]}`` or ``{"ids": [...], "error": {...}}``."""
    reply = orjson.loads(data)
    error = reply.get("error")
    failure = TaskError(str(error.get("raised")), str(error.get("message"))) if error else None
    return list(reply.get("ids") or []), reply.get("results"), failure


class ReplyListener:
    """One subscriber thread per process on a channel named for it; it resubscribes after Redis comes back."""

    def __init__(self, redis_url: str, channel_prefix: str, on_reply: OnReply) -> None:
        self._redis_url = redis_url
        self._channel_prefix = channel_prefix
        self._on_reply = on_reply
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.channel = ""

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
                        self._on_reply(*parse_reply(message["data"]))
            except Exception as exc:
                # Requests fall back to reading the result backend when their wait ends. One line per outage,
                # not one per retry.
                self._subscribed.clear()
                if not lost:
                    log.warning("reply listener lost Redis (%s); retrying every 0.5 s", exc)
                    lost = True
                time.sleep(0.5)
