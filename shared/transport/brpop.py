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
``Channel._brpop_read`` reads and delivers one reply; tests/unit/shared/transport/test_brpop.py fails if
either changes. Unlike the fast paths this is a fix, not a speed-up, so ``create_celery`` selects it for Redis
brokers whatever FAST_PATHS says.

The channel also drops a popped payload kombu cannot turn into a message, where kombu would raise in the
consumer's event loop and the worker would exit ("Unrecoverable error"): one LPUSH of garbage per restart kept
every worker down. Its ``_brpop_read`` is kombu's, with the payload checked before delivery: longer than the
``max_message_bytes`` transport option (the worker sets it from BATCH_MAX_ROWS; refused before it is decoded, its
headers read around the body), not JSON, not a kombu envelope (``body``, ``headers``, ``properties`` with a
delivery tag and delivery info, of the types kombu writes), compressed (this stack never compresses, and kombu
inflates a body before anything could refuse its size), or a body that does not decode as its ``body_encoding``
says. A message broadcast over pub/sub (remote control's pidbox, whose JSON kombu decodes inside a ``try`` but
whose envelope it does not check) is checked the same way before delivery. Each drop is counted in
:data:`DROPPED` and told to the listener the worker sets with :func:`listen` (worker/message_guard.py logs and
counts it); with none, it is logged here. Nothing else changes: what passes is delivered exactly as kombu would
deliver it. tests/unit/shared/transport/test_brpop.py pins kombu's ``_brpop_read`` source, so a kombu upgrade
makes this copy be re-checked.
"""

import json
import logging
import select
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from shared.transport import ledger

log = logging.getLogger(__name__)

# Why the channel dropped a payload: labels of the worker's iris_rejected_messages_total (worker/message_guard.py).
NOT_JSON = "not_json"
NOT_A_MESSAGE = "not_a_message"
BAD_HEADERS = "bad_headers"
BAD_CONTENT = "bad_content"
TOO_LARGE = "too_large"

# listener(reason, detail, headers or None, queue): told of each dropped payload; detail is a short text of ours.
DropListener = Callable[[str, str, Mapping[str, Any] | None, str], None]

DROPPED: Counter[str] = Counter()  # reason -> payloads this process dropped
_listener: DropListener | None = None

# What kombu's JSON decoding of a payload raises: JSONDecodeError, and from its object hook (``__type__`` values:
# dates, decimals, UUIDs, bytes) ValueError, TypeError, AttributeError, KeyError or decimal's InvalidOperation.
_UNDECODABLE = (ValueError, TypeError, AttributeError, KeyError, ArithmeticError, RecursionError)


class UnreadableBody(Exception):
    """A message body that does not decode as its ``body_encoding`` says (raised while kombu builds the message)."""


def listen(listener: DropListener | None) -> None:
    """Tell ``listener`` of each payload a channel of this process drops (None: log each one here instead)."""
    global _listener
    _listener = listener


def _dropped(reason: str, detail: str, headers: Mapping[str, Any] | None, queue: str) -> None:
    """Count one dropped payload and tell the listener, or log it when nobody listens."""
    DROPPED[reason] += 1
    listener = _listener
    if listener is not None:
        listener(reason, detail, headers, queue)
    else:
        log.warning("dropped a malformed message from queue %s: %s (%s)", queue, reason, detail)


def envelope_problem(payload: Any) -> tuple[str, str] | None:
    """Return (reason, detail) when ``payload`` is not a kombu envelope kombu and Celery can read, else None."""
    if type(payload) is not dict:
        return NOT_A_MESSAGE, "the payload is not a JSON object"
    properties = payload.get("properties")
    if type(properties) is not dict:
        return NOT_A_MESSAGE, "no properties object"
    info = properties.get("delivery_info")
    # kombu's QoS records an acknowledged message under its tag with its exchange and routing key.
    if (type(properties.get("delivery_tag")) is not str or type(info) is not dict
            or type(info.get("exchange")) is not str or type(info.get("routing_key")) is not str):
        return NOT_A_MESSAGE, "no delivery tag or delivery info"
    body = payload.get("body")
    if body is not None and type(body) is not str:
        return NOT_A_MESSAGE, "the body is not a string"
    for key in ("content-type", "content-encoding"):
        value = payload.get(key)
        if value is not None and type(value) is not str:
            return NOT_A_MESSAGE, f"{key} is not a string"
    headers = payload.get("headers")
    if type(headers) is not dict:
        return BAD_HEADERS, "the headers are not an object"
    if headers.get("compression"):
        return BAD_CONTENT, "a compressed body"
    return None


def peek_envelope(item: bytes) -> dict[str, Any] | None:
    """Return the envelope of a message too large to decode, without its body, or None if it cannot be read.

    kombu and the API write the body first, base64-encoded: no quote or backslash inside, so it ends at the
    next quote, and the envelope without it is small.
    """
    for opening in (b'{"body": "', b'{"body":"'):
        if item.startswith(opening):
            start = len(opening)
            end = item.find(b'"', start)
            if end < 0 or item.find(b"\\", start, end) >= 0:
                return None
            try:
                envelope = json.loads(item[:start] + item[end:])
            except (ValueError, RecursionError):
                return None
            return envelope if type(envelope) is dict else None
    return None


def peek_headers(item: bytes) -> dict[str, Any] | None:
    """Return the headers of an envelope too large to decode, read around its body, or None if they cannot be."""
    envelope = peek_envelope(item)
    headers = envelope.get("headers") if envelope is not None else None
    return headers if type(headers) is dict else None


def delivery_tag(envelope: Any) -> str | None:
    """Return the delivery tag of a decoded envelope, or None if it has none."""
    properties = envelope.get("properties") if type(envelope) is dict else None
    tag = properties.get("delivery_tag") if type(properties) is dict else None
    return tag if type(tag) is str else None


def _holds_data(sock: Any) -> bool:
    """Return whether ``sock`` has bytes waiting, without reading them (a TLS socket may buffer some itself).

    poll, not select: select refuses a descriptor above 1023, and a closed socket (fd -1) holds nothing.
    """
    pending = getattr(sock, "pending", None)
    if callable(pending) and pending():
        return True
    try:
        fd = sock.fileno()
    except OSError:
        return False
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class Channel(ledger.Channel):
    """A kombu Redis channel, with the ledger, that never BRPOPs over an unread reply nor delivers a non-message."""

    #: Drop a popped payload longer than this many bytes without decoding it; None: no limit. A transport option.
    max_message_bytes: int | None = None
    from_transport_options = (*ledger.Channel.from_transport_options,  # type: ignore[assignment]
                              "max_message_bytes")  # one more than kombu's: its stub types the tuple by length

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Deliver a reply already waiting on the BRPOP connection, then send the next BRPOP."""
        connection = self.client.connection
        sock = getattr(connection, "_sock", None) if connection is not None else None
        if sock is not None and sock.fileno() < 0:
            connection.disconnect()  # closed under it (another thread's disconnect): the BRPOP reconnects
        elif sock is not None and _holds_data(sock):
            try:
                self._brpop_read()  # delivers the message, as if kombu had been waiting for it
            except Empty:
                pass  # a BRPOP that timed out: nothing was popped
            except self.connection_errors:
                pass  # only the close was waiting; _brpop_read dropped the connection, the BRPOP reconnects
        super()._brpop_start(timeout)

    def _brpop_read(self, **options: Any) -> bool:
        """Read one BRPOP reply and deliver its message, as kombu 5.7's ``_brpop_read``; drop what is not one."""
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._message_or_none(item, dest)
            if payload is not None:
                try:
                    self.connection._deliver(payload, dest)
                except UnreadableBody as exc:  # raised by decode_body, before the consumer saw anything
                    _dropped(NOT_A_MESSAGE, str(exc), payload["headers"], dest)
                    self._forget_dropped(payload)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu's: None means "no read outstanding"
            # The BRPOP connection is now idle (its reply has been fully consumed and no new BRPOP has been issued
            # yet): this is the safe moment to flush any pending streaming re-auth token.
            self._flush_brpop_reauth()

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        """Deliver a broadcast (remote control's pidbox) message as kombu does, unless it is not a message."""
        problem = envelope_problem(message)
        if problem is not None:
            headers = message.get("headers") if type(message) is dict else None
            _dropped(*problem, headers if type(headers) is dict else None, exchange)
            return False
        try:
            return bool(super()._deliver_fanout_message(message, exchange))
        except UnreadableBody as exc:
            _dropped(NOT_A_MESSAGE, str(exc), message["headers"], exchange)
            return False

    def _message_or_none(self, item: bytes, queue: str) -> Any:
        """Return the envelope ``item`` holds, or drop it and return None."""
        limit = self.max_message_bytes
        if limit and len(item) > limit:
            envelope = peek_envelope(item)
            headers = envelope.get("headers") if envelope is not None else None
            _dropped(TOO_LARGE, f"{len(item)} bytes, over the {limit}-byte limit",
                     headers if type(headers) is dict else None, queue)
            self._forget_dropped(envelope)
            return None
        try:
            payload = loads(bytes_to_str(item))
        except _UNDECODABLE:
            _dropped(NOT_JSON, "the payload is not JSON", None, queue)
            return None
        problem = envelope_problem(payload)
        if problem is not None:
            headers = payload.get("headers") if type(payload) is dict else None
            _dropped(*problem, headers if type(headers) is dict else None, queue)
            self._forget_dropped(payload)
            return None
        return payload

    def _forget_dropped(self, envelope: Any) -> None:
        """Remove a dropped message's ledger copy, so the sweep never hands it back (a tag of its own only)."""
        tag = delivery_tag(envelope)
        if tag is not None:
            self.forget_delivery(tag)

    def decode_body(self, body: Any, encoding: str | None = None) -> Any:
        """Decode a body as kombu does; raise :class:`UnreadableBody` where kombu would raise anything else."""
        try:
            return super().decode_body(body, encoding)
        except (ValueError, TypeError, AttributeError):  # bad base64 (binascii.Error), or no codec of that name
            raise UnreadableBody("the body does not decode as its body_encoding says") from None


# What salvaging one channel's reply raises: redis-py's errors reading the reply or pushing it back (ConnectionError,
# TimeoutError, ResponseError, InvalidResponse), a socket's OSError, and TypeError or ValueError when the unread reply
# is not a BRPOP's [key, message] (redis-py's BRPOP callback makes a tuple of whatever it read).
SALVAGE_ERRORS = (redis.RedisError, OSError, TypeError, ValueError)


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
        except SALVAGE_ERRORS as exc:  # the process is exiting: report, and go on to the next channel
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
