"""The BRPOP guard delivers a reply already waiting on the connection before kombu sends the next BRPOP.

Also the contract test of shared/kombu_brpop_guard.py: it fails if kombu's ``_brpop_start``/``_brpop_read``
change shape, so that the guard is re-checked on every kombu upgrade.
"""

import inspect
import socket
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty

from shared import kombu_brpop_guard


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


def guarded_channel(sock: socket.socket | None, read: Any, calls: list[str]) -> kombu_brpop_guard.Channel:
    """Return a guard channel, never connected, whose ``_brpop_read`` is ``read``."""
    channel = object.__new__(kombu_brpop_guard.Channel)
    channel.__dict__["client"] = FakeClient(sock)

    def record_read() -> Any:
        calls.append("read")
        return read()

    channel.__dict__["_brpop_read"] = record_read
    return channel


def test_written_against_kombu_5_7() -> None:
    assert kombu.__version__.startswith("5.7."), (
        f"kombu {kombu.__version__}: re-check shared/kombu_brpop_guard.py against its _brpop_start/_brpop_read")


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
        count = kombu_brpop_guard.salvage_unread_replies(transport, push=lambda ch, k, m: pushed.append((k, m)))
    finally:
        idle_ours.close()
        idle_theirs.close()
    assert count == 1 and pushed == [(b"iris", b'{"task": 1}')]


def test_salvage_reports_a_failure_and_never_raises(sockets: tuple[socket.socket, socket.socket]) -> None:
    sockets[1].sendall(b"pending")
    transport = type("T", (), {"channels": [channel_with(ReplyClient(sockets[0], redis.ConnectionError("gone")))]})()
    assert kombu_brpop_guard.salvage_unread_replies(transport, push=lambda ch, k, m: None) == 0
