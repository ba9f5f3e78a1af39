"""Worker replies: how one is decoded, that anything else on the channel is skipped, counted and reported at most
once a second, and that the listener connects nothing until a request needs it."""

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest

from api.batching import replies
from api.batching.batcher import WorkerError
from api.batching.replies import MalformedReply, ReplyListener, max_reply_bytes, parse_reply
from tests.unit.fake_clock import FakeClock

DOWN = "redis://127.0.0.1:1/1"
SECRET = "do-not-log-this-payload"
# What anyone who may PUBLISH on the backend could send instead of a worker's reply, and why it is refused.
GARBAGE = {
    "a JSON array": b"[]",
    "not JSON": b"not json " + SECRET.encode(),
    "invalid UTF-8": b"\xff\xfe\x00",
    "JSON null": b"null",
    "a JSON string": orjson.dumps(SECRET),
    "deep nesting": b"[" * 5000 + b"]" * 5000,
    "ids missing": b'{"results": []}',
    "ids empty": b'{"ids": [], "results": []}',
    "ids a string": b'{"ids": "t1", "results": [1]}',
    "ids not strings": b'{"ids": [1, 2], "results": [1, 2]}',
    "ids holding a list": b'{"ids": [["t1"]], "results": [1]}',
    "ids holding null": b'{"ids": ["t1", null], "results": [1, 2]}',
    "results missing": b'{"ids": ["t1"]}',
    "results null": b'{"ids": ["t1"], "results": null, "error": null}',
    "results too few": b'{"ids": ["t1", "t2"], "results": [1]}',
    "results too many": b'{"ids": ["t1"], "results": [1, 2]}',
    "results an object": b'{"ids": ["t1"], "results": {"0": 1}}',
    "error a string": b'{"ids": ["t1"], "error": "boom"}',
    "error a list": b'{"ids": ["t1"], "error": ["boom"]}',
    "NaN": b'{"ids": ["t1"], "results": [NaN]}',
}


def test_parse_reply_returns_the_ids_and_their_results_in_order() -> None:
    data = orjson.dumps({"ids": ["t1", "t2"], "results": [{"label": "setosa"}, {"label": "virginica"}]})
    assert parse_reply(data) == (["t1", "t2"], [{"label": "setosa"}, {"label": "virginica"}], None)


def test_parse_reply_turns_an_error_into_a_task_error_for_the_batch() -> None:
    data = orjson.dumps({"ids": ["t1", "t2"], "error": {"raised": "ValueError", "message": "bad row"}})
    ids, results, error = parse_reply(data)
    assert ids == ["t1", "t2"] and results is None
    assert isinstance(error, WorkerError) and error.raised == "ValueError" and str(error) == "ValueError: bad row"


def test_parse_reply_takes_an_error_over_results_and_any_error_text() -> None:
    ids, results, error = parse_reply(b'{"ids": ["t1"], "results": [1], "error": {"raised": 3}}')
    assert ids == ["t1"] and results is None
    assert isinstance(error, WorkerError) and error.raised == "3" and str(error) == "3: None"


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_parse_reply_refuses_anything_but_a_workers_reply(data: bytes) -> None:
    with pytest.raises(MalformedReply) as caught:
        parse_reply(data)
    assert SECRET not in str(caught.value)  # the reason names what is wrong, never the content


def test_parse_reply_refuses_a_reply_over_the_size_bound_unread() -> None:
    data = orjson.dumps({"ids": ["t1"], "results": ["x" * 2000]})
    assert parse_reply(data, max_bytes=len(data))[0] == ["t1"]
    with pytest.raises(MalformedReply, match=f"larger than {len(data) - 1} bytes"):
        parse_reply(data, max_bytes=len(data) - 1)


def test_parse_reply_refuses_what_is_not_bytes() -> None:
    with pytest.raises(MalformedReply):
        parse_reply(1)


def test_the_size_bound_holds_a_workers_answer_to_the_largest_batch() -> None:
    row = {"pred_label": "Iris-versicolor", "pred_confidence": 0.9876543210987654,
           "probabilities": {"Iris-setosa": 0.01234567890123, "Iris-versicolor": 0.9876543210987654,
                             "Iris-virginica": 0.000123456789012},
           "model_name": "iris-classifier", "model_version": "12", "model_run_id": "0" * 32}
    table = orjson.dumps({"ids": ["0" * 36], "results": [[row] * 1000]})
    rows = orjson.dumps({"ids": ["0" * 36] * 64, "results": [row] * 64})
    assert len(table) < max_reply_bytes(64, 1000) and len(rows) < max_reply_bytes(64, 1000)
    assert max_reply_bytes(64, 1000) < 2 * 1024 * 1024  # but a flood of huge messages is refused unread


def test_a_malformed_reply_is_skipped_counted_and_the_next_one_delivered(caplog: pytest.LogCaptureFixture) -> None:
    got: list[tuple[Sequence[str], Sequence[Any] | None, WorkerError | None]] = []
    counted: list[int] = []
    listener = ReplyListener(DOWN, "iris:", on_reply=lambda *reply: got.append(reply),
                             on_reject=lambda: counted.append(1))
    for data in GARBAGE.values():
        listener.handle(data)
    listener.handle(orjson.dumps({"ids": ["t1"], "results": [{"label": "setosa"}]}))
    assert got == [(["t1"], [{"label": "setosa"}], None)]
    assert listener.rejected == len(GARBAGE) and len(counted) == len(GARBAGE)
    assert SECRET not in caplog.text


def test_skipped_messages_are_reported_at_most_once_a_second_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(100.0)
    listener = ReplyListener(DOWN, "iris:", on_reply=lambda *_: None, clock=clock)
    caplog.set_level(logging.WARNING, logger=replies.__name__)
    for _ in range(50):
        listener.handle(b"[]")
        clock.now += 0.01
    clock.now += 1.0
    listener.handle(b"not json")
    lines = [r.getMessage() for r in caplog.records if r.name == replies.__name__]
    assert len(lines) == 2, lines
    assert "skipped 1 malformed" in lines[0] and "not a JSON object (2 bytes)" in lines[0]
    assert "skipped 50 malformed" in lines[1] and "not JSON (8 bytes)" in lines[1]


def test_a_reply_whose_hand_off_raises_is_counted_and_the_listener_goes_on() -> None:
    calls: list[Sequence[str]] = []

    def on_reply(ids: Sequence[str], results: Sequence[Any] | None, error: WorkerError | None) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise KeyError("a bug in the hand-off")

    listener = ReplyListener(DOWN, "iris:", on_reply=on_reply)
    listener.handle(orjson.dumps({"ids": ["t1"], "results": [1]}))
    listener.handle(orjson.dumps({"ids": ["t2"], "results": [2]}))
    assert calls == [["t1"], ["t2"]] and listener.rejected == 1


class FakePubSub:
    """Yield the given messages, then wait for more that never come (the daemon thread stays parked, as in the
    API); count the subscriptions."""

    def __init__(self, *data: bytes) -> None:
        self.data = data
        self.channels: list[str] = []

    def subscribe(self, channel: str) -> None:
        self.channels.append(channel)

    def listen(self) -> Iterator[dict[str, Any]]:
        for data in self.data:
            yield {"type": "message", "data": data}
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
    got: list[tuple[Sequence[str], Sequence[Any] | None, WorkerError | None]] = []
    pubsub = FakePubSub(orjson.dumps({"ids": ["t1"], "results": [{"label": "setosa"}]}))
    monkeypatch.setattr(replies.redis.Redis, "from_url", lambda url, **_: FakeRedis(pubsub))

    def on_reply(ids: Sequence[str], results: Sequence[Any] | None, error: WorkerError | None) -> None:
        got.append((ids, results, error))
        answered.set()

    listener = ReplyListener(DOWN, "iris:", on_reply=on_reply)
    channel = listener.ensure_started()
    assert listener.ensure_started() == channel  # once per process
    assert answered.wait(10)  # generous bound on a failure, not an interval of the listener
    assert channel.startswith("iris:reply:") and pubsub.channels == [channel]
    assert got == [(["t1"], [{"label": "setosa"}], None)]


def test_garbage_on_the_channel_keeps_the_subscription(monkeypatch: pytest.MonkeyPatch) -> None:
    answered = threading.Event()
    got: list[Sequence[str]] = []
    pubsub = FakePubSub(*GARBAGE.values(), orjson.dumps({"ids": ["t1"], "results": [1]}))
    monkeypatch.setattr(replies.redis.Redis, "from_url", lambda url, **_: FakeRedis(pubsub))

    def on_reply(ids: Sequence[str], results: Sequence[Any] | None, error: WorkerError | None) -> None:
        got.append(ids)
        answered.set()

    listener = ReplyListener(DOWN, "iris:", on_reply=on_reply)
    channel = listener.ensure_started()
    assert answered.wait(10)  # generous bound on a failure, not an interval of the listener
    assert got == [["t1"]] and listener.rejected == len(GARBAGE)
    assert pubsub.channels == [channel]  # subscribed once: no message dropped the subscription
