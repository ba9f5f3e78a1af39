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
reads and delivers it as kombu would have. Written against kombu 5.7.0 (pinned in pyproject.toml), whose
``Channel._brpop_start`` sends the BRPOP and ``Channel._brpop_read`` reads and delivers one reply;
tests/unit/shared/test_kombu_brpop_guard.py fails if either changes. Unlike the fast paths this is a fix,
not a speed-up, so ``create_celery`` selects it for Redis brokers whatever FAST_PATHS says.
"""

import select
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty


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


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
