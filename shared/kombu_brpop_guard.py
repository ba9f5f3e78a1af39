"""kombu's Redis transport, made to read a BRPOP reply it lost track of before it sends the next BRPOP.

The bug (kombu 5.7.0, redis-py 8.1): when a worker is paused (a VM freeze, a long stop-the-world pause) while
its BRPOP is outstanding, Redis pops the next task and writes it into the paused worker's socket. If Redis also
restarts during the pause, the worker resumes with the popped task unread in that socket and kombu no longer
waiting for it, and kombu sends a new BRPOP on the same connection. redis-py first runs its health check on the
idle connection (``health_check_interval``): it sends PING, reads the waiting BRPOP reply as the PING's answer,
and drops the connection, and the task with it. It was gone from Redis (popped) and from kombu's unacked
record (never delivered). Measured: 2 tasks lost in 18 runs of tests/integration/test_worker_heals.py's paused
drill before this guard.

The guard: before it sends a BRPOP, the channel checks whether its connection already holds a reply, and if so
reads and delivers it as kombu would have. When the consumer is wedged instead (worker/watchdog.py then exits
the worker), :func:`salvage_unread_replies` reads such a reply and pushes the task back onto its queue first.

Written against kombu 5.7.0 (pinned in pyproject.toml), whose ``Channel._brpop_start`` sends the BRPOP and
``Channel._brpop_read`` reads and delivers one reply; tests/unit/shared/test_kombu_brpop_guard.py fails if
either changes. Unlike the fast paths this is a fix, not a speed-up, so ``create_celery`` selects it for Redis
brokers whatever FAST_PATHS says.
"""

import logging
import select
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty

log = logging.getLogger(__name__)


def _holds_data(sock: Any) -> bool:
    """Return whether ``sock`` has bytes waiting, without reading them (a TLS socket may buffer some itself)."""
    pending = getattr(sock, "pending", None)
    if callable(pending) and pending():
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that never sends a BRPOP over an unread reply."""

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Deliver a reply already waiting on the BRPOP connection, then send the next BRPOP."""
        connection = self.client.connection
        sock = getattr(connection, "_sock", None) if connection is not None else None
        if sock is not None and _holds_data(sock):
            try:
                self._brpop_read()  # delivers the message, as if kombu had been waiting for it
            except Empty:
                pass  # a BRPOP that timed out: nothing was popped
            except self.connection_errors:
                pass  # only the close was waiting; _brpop_read dropped the connection, the BRPOP reconnects
        super()._brpop_start(timeout)


def salvage_unread_replies(transport: Any, push: Callable[[Any, bytes, bytes], None] | None = None) -> int:
    """Push every BRPOP reply waiting unread on ``transport``'s channels back onto its queue; return how many.

    For a worker about to exit because its event loop is wedged: the loop will never read these replies, and
    Redis already removed the tasks from their queues. Each goes back to the end BRPOP takes from, so it is the
    next one out. ``push(channel, key, message)`` defaults to an RPUSH on a fresh connection of the channel's pool.
    """
    push = push or _rpush
    salvaged = 0
    for channel in list(getattr(transport, "channels", None) or []):
        client = channel.__dict__.get("client")  # only a channel that consumed has one
        connection = getattr(client, "connection", None)
        sock = getattr(connection, "_sock", None)
        if sock is None or not _holds_data(sock):
            continue
        try:
            reply = client.parse_response(connection, "BRPOP")
            channel._in_poll = None  # the reply kombu would wait for is read
            if reply:
                key, message = reply
                push(channel, key, message)
                salvaged += 1
        except Exception as exc:  # the process is exiting: report, never raise
            log.error("could not put an unread task back on its queue: %s", exc)
    return salvaged


def _rpush(channel: Any, key: bytes, message: bytes) -> None:
    """RPUSH ``message`` onto ``key`` over a new connection with short timeouts."""
    params = {**channel.pool.connection_kwargs, "socket_timeout": 2, "socket_connect_timeout": 2}
    client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=channel.pool.connection_class,
                                                              **params))
    try:
        client.rpush(key, message)
    finally:
        client.close()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
