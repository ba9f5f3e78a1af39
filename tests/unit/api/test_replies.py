"""Worker replies: how one is decoded, and that the listener connects nothing until a request needs it."""

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest

from api import replies
from api.batcher import TaskError
from api.replies import ReplyListener, parse_reply

DOWN = "redis://127.0.0.1:1/1"


def test_parse_reply_returns_the_ids_and_their_results_in_order() -> None:
    data = orjson.dumps({"ids": ["t1", "t2"], "results": [{"label": "setosa"}, {"label": "virginica"}]})
    assert parse_reply(data) == (["t1", "t2"], [{"label": "setosa"}, {"label": "virginica"}], None)


def test_parse_reply_turns_an_error_into_a_task_error_for_the_batch() -> None:
    data = orjson.dumps({"ids": ["t1", "t2"], "error": {"raised": "ValueError", "message": "bad row"}})
    ids, results, error = parse_reply(data)
    assert ids == ["t1", "t2"] and results is None
    assert isinstance(error, TaskError) and error.raised == "ValueError" and str(error) == "ValueError: bad row"


def test_parse_reply_without_ids_answers_nobody() -> None:
    assert parse_reply(b'{"results": []}') == ([], [], None)


class FakePubSub:
    """Yield one reply, then wait for more that never come (the daemon thread stays parked, as in the API)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.channels: list[str] = []

    def subscribe(self, channel: str) -> None:
        self.channels.append(channel)

    def listen(self) -> Iterator[dict[str, Any]]:
        yield {"type": "message", "data": self.data}
        threading.Event().wait()


class FakeRedis:
    def __init__(self, pubsub: FakePubSub) -> None:
        self._pubsub = pubsub

    def pubsub(self, ignore_subscribe_messages: bool = False) -> FakePubSub:
        return self._pubsub


@pytest.fixture
def from_url_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(url: str, **_: Any) -> None:
        calls.append(url)
        raise AssertionError("the listener connected")

    monkeypatch.setattr(replies.redis.Redis, "from_url", refuse)
    return calls


def test_the_listener_starts_nothing_at_construction(from_url_calls: list[str]) -> None:
    before = {thread.ident for thread in threading.enumerate()}
    listener = ReplyListener(DOWN, "iris:", on_reply=lambda *_: None)
    assert listener.channel == "" and from_url_calls == []
    assert {thread.ident for thread in threading.enumerate()} == before


def test_the_listener_subscribes_to_a_channel_of_its_own_and_hands_each_reply_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answered = threading.Event()
    got: list[tuple[Sequence[str], Sequence[Any] | None, TaskError | None]] = []
    pubsub = FakePubSub(orjson.dumps({"ids": ["t1"], "results": [{"label": "setosa"}]}))
    monkeypatch.setattr(replies.redis.Redis, "from_url", lambda url, **_: FakeRedis(pubsub))

    def on_reply(ids: Sequence[str], results: Sequence[Any] | None, error: TaskError | None) -> None:
        got.append((ids, results, error))
        answered.set()

    listener = ReplyListener(DOWN, "iris:", on_reply=on_reply)
    channel = listener.ensure_started()
    assert listener.ensure_started() == channel  # once per process
    assert answered.wait(10)  # generous bound on a failure, not an interval of the listener
    assert channel.startswith("iris:reply:") and pubsub.channels == [channel]
    assert got == [(["t1"], [{"label": "setosa"}], None)]
