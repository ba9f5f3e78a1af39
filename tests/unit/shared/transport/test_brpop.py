"""The BRPOP guard reads a reply already waiting before the next BRPOP, and drops payloads that are not messages.

Also the contract test of shared/transport/brpop.py: it fails if kombu's ``_brpop_start``/``_brpop_read``
change shape, so that the guard is re-checked on every kombu upgrade.
"""

import base64
import hashlib
import inspect
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.virtual import Empty

from shared.transport import brpop
from tests.unit.shared.fake_redis import URL as NOWHERE


class FakeClient:
    """What the guard reads of ``channel.client``: a connection with a socket."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.connection = type("Conn", (), {"_sock": sock})()


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, redis_side = socket.socketpair()
    yield ours, redis_side
    ours.close()
    redis_side.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record kombu's own ``_brpop_start`` (the BRPOP being sent) instead of running it."""
    calls: list[str] = []
    monkeypatch.setattr(kombu_redis.Channel, "_brpop_start", lambda self, timeout=None: calls.append("BRPOP"))
    return calls


def guarded_channel(sock: socket.socket | None, read: Any, calls: list[str]) -> brpop.Channel:
    """Return a guard channel, never connected, whose ``_brpop_read`` is ``read``."""
    channel = object.__new__(brpop.Channel)
    channel.__dict__["client"] = FakeClient(sock)

    def record_read() -> Any:
        calls.append("read")
        return read()

    channel.__dict__["_brpop_read"] = record_read
    return channel


def test_written_against_kombu_5_7() -> None:
    assert kombu.__version__.startswith("5.7."), (
        f"kombu {kombu.__version__}: re-check shared/transport/brpop.py against its _brpop_start/_brpop_read")


def test_kombus_brpop_methods_keep_the_shape_the_guard_relies_on() -> None:
    assert list(inspect.signature(kombu_redis.Channel._brpop_start).parameters) == ["self", "timeout"]
    start = inspect.getsource(kombu_redis.Channel._brpop_start)
    assert "self.client.connection.send_command" in start
    read = inspect.getsource(kombu_redis.Channel._brpop_read)
    assert "self.connection._deliver" in read and "raise Empty" in read
    assert "self._in_poll = None" in read


def test_a_reply_waiting_on_the_connection_is_delivered_before_the_next_brpop(
        sockets: tuple[socket.socket, socket.socket], sent: list[str]) -> None:
    ours, redis_side = sockets
    redis_side.sendall(b"*2\r\n$4\r\niris\r\n$2\r\n{}\r\n")  # a popped task the worker never read
    channel = guarded_channel(ours, read=lambda: True, calls=sent)
    channel._brpop_start()
    assert sent == ["read", "BRPOP"]


def test_with_nothing_waiting_only_the_brpop_is_sent(sockets: tuple[socket.socket, socket.socket],
                                                      sent: list[str]) -> None:
    channel = guarded_channel(sockets[0], read=lambda: True, calls=sent)
    channel._brpop_start()
    assert sent == ["BRPOP"]


def test_with_no_connection_yet_only_the_brpop_is_sent(sent: list[str]) -> None:
    channel = guarded_channel(None, read=lambda: True, calls=sent)
    channel._brpop_start()
    assert sent == ["BRPOP"]


@pytest.mark.parametrize("failure", [Empty(), redis.ConnectionError("closed")], ids=["timed-out", "closed"])
def test_a_timed_out_or_closed_reply_still_sends_the_next_brpop(
        sockets: tuple[socket.socket, socket.socket], sent: list[str], failure: Exception) -> None:
    sockets[1].sendall(b"*-1\r\n")

    def read() -> None:
        raise failure

    channel = guarded_channel(sockets[0], read=read, calls=sent)
    channel.connection_errors = (redis.ConnectionError,)
    channel._brpop_start()
    assert sent == ["read", "BRPOP"]


class ReplyClient:
    """A channel client whose connection holds ``sock`` and whose BRPOP reply is ``reply`` (or raises it)."""

    def __init__(self, sock: socket.socket | None, reply: Any) -> None:
        self.connection = type("Conn", (), {"_sock": sock})()
        self.reply = reply

    def parse_response(self, connection: Any, command: str) -> Any:
        assert command == "BRPOP"
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def channel_with(client: ReplyClient | None) -> Any:
    channel = type("FakeChannel", (), {})()
    if client is not None:
        channel.__dict__["client"] = client
    return channel


def test_salvage_pushes_an_unread_reply_back_onto_its_queue(sockets: tuple[socket.socket, socket.socket]) -> None:
    sockets[1].sendall(b"pending")
    idle_ours, idle_theirs = socket.socketpair()
    try:
        waiting = channel_with(ReplyClient(sockets[0], (b"iris", b'{"task": 1}')))
        idle = channel_with(ReplyClient(idle_ours, (b"iris", b"never read")))
        never_consumed = channel_with(None)
        transport = type("T", (), {"channels": [never_consumed, idle, waiting]})()
        pushed: list[tuple[bytes, bytes]] = []
        count = brpop.salvage_unread_replies(transport, push=lambda ch, k, m: pushed.append((k, m)))
    finally:
        idle_ours.close()
        idle_theirs.close()
    assert count == 1 and pushed == [(b"iris", b'{"task": 1}')]


def test_salvage_reports_a_failure_and_never_raises(sockets: tuple[socket.socket, socket.socket]) -> None:
    sockets[1].sendall(b"pending")
    transport = type("T", (), {"channels": [channel_with(ReplyClient(sockets[0], redis.ConnectionError("gone")))]})()
    assert brpop.salvage_unread_replies(transport, push=lambda ch, k, m: None) == 0


@pytest.mark.parametrize("unread", [redis.ResponseError("WRONGTYPE"), (b"iris", b"{}", b"extra"), 5],
                         ids=["error-reply", "not-key-and-message", "not-a-list"])
def test_salvage_reports_a_reply_that_is_not_a_brpops_and_goes_on_to_the_next_channel(
        unread: Any, caplog: pytest.LogCaptureFixture) -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        for _, theirs in pairs:
            theirs.sendall(b"pending")
        odd = channel_with(ReplyClient(pairs[0][0], unread))
        waiting = channel_with(ReplyClient(pairs[1][0], (b"iris", b'{"task": 1}')))
        pushed: list[tuple[bytes, bytes]] = []
        count = brpop.salvage_unread_replies(type("T", (), {"channels": [odd, waiting]})(),
                                             push=lambda ch, k, m: pushed.append((k, m)))
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
    assert count == 1 and pushed == [(b"iris", b'{"task": 1}')]
    assert "could not put an unread task back on its queue" in caplog.text


# What is delivered or dropped: the channel's check of each popped payload.

# sha256 of kombu 5.7.0's Channel._brpop_read, which the guard's _brpop_read copies with the payload check added.
KOMBU_BRPOP_READ_SHA256 = "c42518699709f2df90f55a048fe6346612ae5527e5c4a6819f2c0920dc62088f"


def test_the_copied_brpop_read_is_still_kombus() -> None:
    source = inspect.getsource(kombu_redis.Channel._brpop_read)
    assert hashlib.sha256(source.encode()).hexdigest() == KOMBU_BRPOP_READ_SHA256, (
        "kombu's _brpop_read changed: port the change to shared/transport/brpop.Channel._brpop_read, then re-pin")


def test_kombu_builds_the_message_before_recording_it_and_decodes_the_body_there() -> None:
    # A body decode_body refuses never reaches the unacknowledged record or the consumer.
    callback = inspect.getsource(virtual.Channel.basic_consume)
    assert callback.index("self.Message(raw_message, channel=self)") < callback.index("self.qos.append")
    assert "channel.decode_body(body, properties.get('body_encoding'))" in inspect.getsource(virtual.Message.__init__)


class PoppingClient:
    """A channel client whose one BRPOP reply is ``item``, popped from queue ``iris``."""

    def __init__(self, item: bytes) -> None:
        self.item = item
        self.connection = type("Conn", (), {"_sock": None})()

    def parse_response(self, connection: Any, command: str, **options: Any) -> Any:
        assert command == "BRPOP"
        return b"iris", self.item


@pytest.fixture
def popping(fake_redis: type) -> Iterator[Any]:
    """Return ``pop(item) -> (delivered messages, drops heard)`` on a guard channel consuming ``iris``."""
    channels = fake_redis_channels(brpop.Transport, {"max_message_bytes": 4096})
    channel = next(channels)
    delivered: list[Any] = []
    heard: list[tuple[str, str, Any, str]] = []
    channel.basic_consume("iris", False, delivered.append, "iris-consumer")
    brpop.listen(lambda *drop: heard.append(drop))

    def pop(item: bytes) -> tuple[list[Any], list[tuple[str, str, Any, str]]]:
        channel.__dict__["client"] = PoppingClient(item)
        assert channel._brpop_read() is True
        return delivered, heard

    yield pop
    brpop.listen(None)
    next(channels, None)


def fake_redis_channels(transport: type, options: dict[str, Any]) -> Iterator[Any]:
    with Connection(NOWHERE, transport=transport, transport_options=options) as conn:
        yield conn.channel()


def envelope(**changes: Any) -> dict[str, Any]:
    """A kombu envelope as Celery writes one, with ``changes`` (``...`` removes a field)."""
    message = {"body": base64.b64encode(b"[[1], {}, {}]").decode(), "content-encoding": "utf-8",
               "content-type": "application/json", "headers": {"task": "iris.classify", "id": "task-1"},
               "properties": {"delivery_tag": "tag-1", "delivery_info": {"exchange": "", "routing_key": "iris"},
                              "body_encoding": "base64"}}
    message.update(changes)
    return {k: v for k, v in message.items() if v is not ...}


def test_a_good_message_is_delivered_as_kombu_delivers_it(popping: Any) -> None:
    delivered, heard = popping(json.dumps(envelope()).encode())
    (message,) = delivered
    assert message.body == b"[[1], {}, {}]" and message.headers["id"] == "task-1" and heard == []


@pytest.mark.parametrize(("item", "reason"), [
    (b"not JSON {", "not_json"),
    (b'{"__type__": "decimal", "__value__": "x"}', "not_json"),  # kombu's object hook raises decimal's error
    (b"[1, 2, 3]", "not_a_message"),
    (json.dumps(envelope(properties=...)).encode(), "not_a_message"),
    (json.dumps(envelope(properties={"delivery_tag": "t"})).encode(), "not_a_message"),
    (json.dumps(envelope(properties={"delivery_tag": 5, "delivery_info": {"exchange": "", "routing_key": "iris"}})
                ).encode(), "not_a_message"),
    (json.dumps(envelope(body=5)).encode(), "not_a_message"),
    (json.dumps(envelope(**{"content-type": ["json"]})).encode(), "not_a_message"),
    (json.dumps(envelope(body="!!!not base64==")).encode(), "not_a_message"),
    (json.dumps(envelope(properties={"delivery_tag": "t", "body_encoding": "rot13",
                                     "delivery_info": {"exchange": "", "routing_key": "iris"}})).encode(),
     "not_a_message"),
    (json.dumps(envelope(headers=["task"])).encode(), "bad_headers"),
    (json.dumps(envelope(headers=...)).encode(), "bad_headers"),
    (json.dumps(envelope(headers={"task": "iris.classify", "compression": "application/x-gzip"})).encode(),
     "bad_content"),
    (json.dumps(envelope(body="A" * 8192)).encode(), "too_large"),
], ids=["not-json", "bad-typed-value", "array", "no-properties", "no-delivery-info", "tag-a-number",
        "body-a-number", "content-type-a-list", "bad-base64", "unknown-body-encoding", "headers-a-list",
        "no-headers", "compressed", "too-large"])
def test_a_payload_that_is_not_a_message_is_dropped_counted_and_told_to_the_listener(
        popping: Any, item: bytes, reason: str) -> None:
    before = brpop.DROPPED[reason]
    delivered, heard = popping(item)
    assert delivered == []
    assert [drop[0] for drop in heard] == [reason] and heard[0][3] == "iris"
    assert brpop.DROPPED[reason] == before + 1


def test_the_headers_of_a_payload_too_large_to_decode_are_read_around_its_body(popping: Any) -> None:
    _, heard = popping(json.dumps(envelope(body="A" * 8192)).encode())
    [(reason, detail, headers, _)] = heard
    assert reason == "too_large" and headers == {"task": "iris.classify", "id": "task-1"}
    assert "over the 4096-byte limit" in detail


def test_with_nobody_listening_a_drop_is_logged_here(popping: Any, caplog: pytest.LogCaptureFixture) -> None:
    brpop.listen(None)
    with caplog.at_level(logging.WARNING, logger="shared.transport.brpop"):
        popping(b"not JSON {")
    assert "dropped a malformed message from queue iris: not_json" in caplog.text
    assert "not JSON {" not in caplog.text  # never the payload


@pytest.mark.parametrize(("item", "headers"), [
    (b'{"body": "QUJD", "headers": {"id": "x"}, "properties": {}}', {"id": "x"}),
    (b'{"body":"QUJD","headers":{"id":"x"}}', {"id": "x"}),
    (b'{"body": "a\\"b", "headers": {"id": "x"}}', None),  # not base64: the body's end cannot be found
    (b'{"headers": {"id": "x"}, "body": "QUJD"}', None),  # not written body first
    (b'{"body": "QUJD", "headers": [1]}', None),
    (b'{"body": "QUJD", "headers": {"id": ', None),
], ids=["kombu", "orjson", "escaped-body", "headers-first", "headers-a-list", "truncated"])
def test_peek_headers_reads_a_base64_bodys_envelope_without_it(item: bytes, headers: Any) -> None:
    assert brpop.peek_headers(item) == headers


def test_the_limit_is_a_transport_option_and_unset_by_default(fake_redis: type) -> None:
    limited = fake_redis_channels(brpop.Transport, {"max_message_bytes": 123})
    assert next(limited).max_message_bytes == 123
    next(limited, None)
    unlimited = fake_redis_channels(brpop.Transport, {})
    assert next(unlimited).max_message_bytes is None
    next(unlimited, None)


def test_the_fast_path_channels_guard_their_payloads_too() -> None:
    from shared.transport import client_per_pool, no_ack

    assert issubclass(client_per_pool.Channel, brpop.Channel)
    assert issubclass(no_ack.Channel, brpop.Channel)


def test_kombu_hands_each_broadcast_message_to_deliver_fanout_message() -> None:
    receive = inspect.getsource(kombu_redis.Channel._receive_one)
    assert "message = loads(bytes_to_str(payload['data']))" in receive
    assert "return self._deliver_fanout_message(message, exchange)" in receive
    assert "self.connection._deliver(message, self._fanout_to_queue[exchange])" in inspect.getsource(
        kombu_redis.Channel._deliver_fanout_message)


@pytest.mark.parametrize(("message", "reason"), [
    ([1, 2], "not_a_message"),
    (envelope(properties=...), "not_a_message"),
    (envelope(body="!!!not base64=="), "not_a_message"),
    (envelope(headers=None), "bad_headers"),
], ids=["array", "no-properties", "bad-base64", "no-headers"])
def test_a_broadcast_that_is_not_a_message_is_dropped_and_a_good_one_delivered(
        fake_redis: type, message: Any, reason: str) -> None:
    channels = fake_redis_channels(brpop.Transport, {})
    channel = next(channels)
    heard: list[tuple[str, str, Any, str]] = []
    delivered: list[Any] = []
    brpop.listen(lambda *drop: heard.append(drop))
    try:
        channel._fanout_to_queue["celery.pidbox"] = "pidbox-queue"
        channel.basic_consume("pidbox-queue", True, delivered.append, "pidbox-consumer")
        assert channel._deliver_fanout_message(message, "celery.pidbox") is False
        assert [(drop[0], drop[3]) for drop in heard] == [(reason, "celery.pidbox")] and delivered == []
        assert channel._deliver_fanout_message(envelope(), "celery.pidbox") is True
        assert len(delivered) == 1
    finally:
        brpop.listen(None)
        next(channels, None)


def test_a_closed_socket_holds_nothing_and_a_waiting_reply_is_seen(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    ours, redis_side = sockets
    assert not brpop._holds_data(ours)
    redis_side.sendall(b"*-1\r\n")
    assert brpop._holds_data(ours)
    ours.close()  # what another thread's disconnect can leave in a connection's _sock: fd -1
    assert not brpop._holds_data(ours)
