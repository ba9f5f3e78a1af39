"""The message guard refuses malformed messages once each, and lets good ones through decoded once.

Also what a refusal does (logged, counted, answered, acknowledged) and the Celery 5.7 consumer hooks it relies on.
"""

import inspect
import logging
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from celery import Celery, signals
from celery.exceptions import InvalidTaskError, NotRegistered
from celery.worker.consumer import consumer as celery_consumer
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from shared import tasks as names
from shared.errors import PayloadValidationError
from shared.settings import Settings
from shared.transport import brpop
from shared.transport.no_ack import TRANSPORT as FAST_TRANSPORT
from worker import message_guard
from worker.fastpaths import strategy as fast_strategy
from worker.message_guard import (
    REASONS,
    Consumer,
    Desk,
    Limits,
    body_problem,
    classify_rows_problem,
    classify_table_problem,
    guard,
    header_problem,
    rows_problem,
)

ROW = [7.7, 2.6, 6.9, 2.3]
HEADERS = {"lang": "py", "task": names.CLASSIFY_ROWS, "id": "batch-1", "root_id": "batch-1", "timelimit": [None, None],
           "request_ids": ["req-1"], "result_hold": 15, "result_marks": "iris:task:", "eta": None}
LIMITS = Limits(public_rows=10, internal_rows=20, body_bytes=2048, message_bytes=4096)


class Backend:
    """Records what the desk stores; raises ``fails`` when set."""

    def __init__(self, fails: Exception | None = None) -> None:
        self.stored: list[tuple[str, Any, str]] = []
        self.fails = fails

    def store_result(self, task_id: str, result: Any, state: str) -> None:
        if self.fails is not None:
            raise self.fails
        self.stored.append((task_id, result, state))


def desk(fast: bool = True, backend: Backend | None = None) -> Desk:
    return Desk(SimpleNamespace(backend=backend or Backend()), LIMITS, fast)  # type: ignore[arg-type]


def message(body: Any = None, headers: Any = None, content_type: str = "application/json",
            raw: bytes | None = None) -> Message:
    """A kombu message as the consumer hands it to a strategy: the body still encoded."""
    encoded = raw if raw is not None else orjson.dumps(body if body is not None else [[[ROW], ["row-1"], "r"], {}, {}])
    built = Message(body=encoded, content_type=content_type, content_encoding="utf-8", headers=dict(HEADERS),
                    delivery_info={"routing_key": "iris.rows"})
    if headers is not None:
        built.headers = headers  # after kombu read them: it needs an object (on Redis, the transport ensures one)
    return built


@pytest.fixture
def rejected_signals() -> Iterator[list[Any]]:
    heard: list[Any] = []

    def on_rejected(**kwargs: Any) -> None:
        heard.append(kwargs)

    signals.task_rejected.connect(on_rejected, weak=False)
    yield heard
    signals.task_rejected.disconnect(on_rejected)


def test_every_reason_is_documented_and_the_transports_are_among_them() -> None:
    transport = {brpop.NOT_JSON, brpop.NOT_A_MESSAGE, brpop.BAD_HEADERS,
                 brpop.BAD_CONTENT, brpop.TOO_LARGE}
    assert transport <= set(REASONS) and all(REASONS.values())


def test_the_limits_follow_batch_max_rows_and_batch_max_size() -> None:
    limits = Limits.from_settings(Settings(batch_max_rows=1000, batch_max_size=64))
    assert (limits.public_rows, limits.internal_rows) == (1000, 1000)
    assert limits.body_bytes == 1000 * 512 + 65536 and limits.message_bytes == 2 * limits.body_bytes + 65536
    assert Limits.from_settings(Settings(batch_max_rows=10, batch_max_size=2000)).internal_rows == 2000


@pytest.mark.parametrize(("headers", "detail"), [
    ([], "the headers are not an object"),
    ({"task": "t"}, "no task id"),
    ({"task": "t", "id": 5}, "no task id"),
    ({"task": "t", "id": ""}, "no task id"),
    ({"task": "t", "id": "x" * 256}, "no task id"),
    ({"id": "x"}, "no task name"),
    ({"task": "t", "id": "x", "timelimit": [1, 2, 3]}, "timelimit"),
    ({"task": "t", "id": "x", "timelimit": "ab"}, "timelimit"),
    ({"task": "t", "id": "x", "timelimit": [True, None]}, "timelimit"),
    ({"task": "t", "id": "x", "shadow": ["s"]}, "shadow is not a string"),
    ({"task": "t", "id": "x", "traceparent": 1}, "traceparent is not a string"),
    ({"task": "t", "id": "x", "result_marks": {}}, "result_marks is not a string"),
    ({"task": "t", "id": "x", "result_hold": "15"}, "result_hold"),
    ({"task": "t", "id": "x", "result_hold": -1}, "result_hold"),
    ({"task": "t", "id": "x", "eta": "not a date"}, "eta is not an ISO 8601 time"),
    ({"task": "t", "id": "x", "expires": 5}, "expires is not an ISO 8601 time"),
])
def test_headers_of_the_wrong_shape_are_refused(headers: Any, detail: str) -> None:
    problem = header_problem(headers)
    assert problem is not None and problem[0] == "bad_headers" and detail in problem[1]


def test_the_headers_celery_and_the_api_write_pass() -> None:
    assert header_problem(HEADERS) is None
    assert header_problem({**HEADERS, "timelimit": [60, 30.5], "eta": "2026-12-06T05:00:49.257495+00:00",
                           "shadow": "name", "group": "g", "result_hold": 0}) is None


@pytest.mark.parametrize("payload", [{"args": []}, [[], {}], [[], {}, {}, {}], [5, {}, {}], [[], [], {}],
                                     [[], {}, []], "body", None],
                         ids=["object", "two", "four", "args-a-number", "kwargs-a-list", "embed-a-list", "string",
                              "null"])
def test_a_body_that_is_not_args_kwargs_and_embed_is_refused(payload: Any) -> None:
    problem = body_problem(payload)
    assert problem is not None and problem[0] == "bad_body"


def test_a_protocol_2_body_passes() -> None:
    assert body_problem([[1], {"a": 1}, None]) is None and body_problem([[], {}, {"callbacks": None}]) is None


@pytest.mark.parametrize("rows", [[["a", "b", "c", "d"]], [ROW[:3]], [[*ROW, 1.0]], ["abcd"], [None],
                                  [[True, True, True, True]], [[None, 1, 1, 1]], [[float("nan"), 1, 1, 1]],
                                  [[float("inf"), 1, 1, 1]], [[10**400, 1, 1, 1]], [ROW, [1, 2, "3", 4]]],
                         ids=["strings", "three", "five", "a-string-of-four", "null", "booleans", "a-null",
                              "nan", "inf", "huge-integer", "the-second-row"])
def test_rows_that_are_not_four_finite_numbers_are_refused(rows: list[Any]) -> None:
    problem = rows_problem(rows)
    assert problem is not None and problem[0] == "bad_rows"


def test_rows_of_four_finite_numbers_pass() -> None:
    assert rows_problem([ROW, [1, 2, 3, 4], [0.1, 1e-300, 100, 5]]) is None


@pytest.mark.parametrize(("args", "kwargs", "reason"), [
    ([[ROW]], {}, "bad_body"),
    ([[ROW], ["a"], "r", "extra"], {}, "bad_body"),
    ([[ROW], ["a"]], {"reply_to": "r"}, "bad_body"),
    ([ROW, ["a", "b", "c", "d"], "r"], {}, "bad_rows"),
    ({"rows": 1}, {}, "bad_body"),
    (["rows", ["a"], "r"], {}, "bad_body"),
    ([[ROW], "a", "r"], {}, "bad_body"),
    ([[ROW], [1], "r"], {}, "bad_body"),
    ([[ROW], [""], "r"], {}, "bad_body"),
    ([[ROW], ["a"], 5], {}, "bad_body"),
    ([[ROW], ["a", "b"], "r"], {}, "bad_body"),
    ([[], [], "r"], {}, "bad_body"),
    ([[["x", 1, 1, 1]], ["a"], "r"], {}, "bad_rows"),
], ids=["one-argument", "four-arguments", "keywords", "a-row-not-rows", "args-an-object", "rows-a-string",
        "ids-a-string", "an-id-a-number", "an-empty-id", "reply-to-a-number", "more-ids-than-rows", "no-rows",
        "a-bad-row"])
def test_classify_rows_arguments_its_code_takes_on_trust_are_checked(args: Any, kwargs: Any, reason: str) -> None:
    problem = classify_rows_problem(args, kwargs, LIMITS)
    assert problem is not None and problem[0] == reason


def test_classify_rows_with_more_rows_than_allowed_is_left_to_the_task_to_refuse_by_count() -> None:
    assert classify_rows_problem([[ROW], ["a"], "r"], {}, LIMITS) is None
    assert classify_rows_problem([[ROW], ["a"]], {}, LIMITS) is None  # reply_to defaults to None
    many = [["x"]] * 21  # not even rows: the count is refused first, with a FAILURE on the reply channel
    assert classify_rows_problem([many, ["a"] * 21, "r"], {}, LIMITS) is None


@pytest.mark.parametrize(("args", "reason"), [
    ([[ROW]], "bad_body"), ([[ROW], 5, "r"], "bad_body"), ([[ROW], "", "r"], "bad_body"),
    ([[ROW], "a", ["r"]], "bad_body"), (["rows", "a", "r"], "bad_body"), ([[[1, 2]], "a", "r"], "bad_rows"),
], ids=["one-argument", "id-a-number", "empty-id", "reply-to-a-list", "rows-a-string", "a-short-row"])
def test_classify_table_arguments_are_checked(args: Any, reason: str) -> None:
    problem = classify_table_problem(args, {}, LIMITS)
    assert problem is not None and problem[0] == reason
    assert classify_table_problem([[ROW], "a", None], {}, LIMITS) is None


Handled = tuple[list[Any], list[Any]]


def run_guard(message: Message, task_name: str = names.CLASSIFY_ROWS, the_desk: Desk | None = None) -> Handled:
    """Run ``message`` through the guard of a task; return (what reached the strategy, acknowledgements)."""
    reached: list[Any] = []
    acked: list[Any] = []

    def strategy(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        reached.append(message.payload)

    task = SimpleNamespace(name=task_name)
    consumer = SimpleNamespace(connection_errors=(OSError,))
    handle = guard(strategy, task, the_desk or desk(), consumer)  # type: ignore[arg-type]
    handle(message, None, lambda *args: acked.append(args), None, [])
    return reached, acked


def test_a_good_message_reaches_the_strategy_decoded_once_and_is_not_acknowledged_by_the_guard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    good = message()
    decodes: list[Any] = []
    real = fast_strategy.orjson.loads
    monkeypatch.setattr(fast_strategy.orjson, "loads", lambda body: decodes.append(body) or real(body))
    reached, acked = run_guard(good)
    assert reached == [[[[ROW], ["row-1"], "r"], {}, {}]] and acked == []
    assert fast_strategy.decode(good) is reached[0] and len(decodes) == 1  # the strategy reads the cache


def test_with_fast_paths_off_the_guard_decodes_with_kombu() -> None:
    reached, _ = run_guard(message(), the_desk=desk(fast=False))
    assert reached == [[[[ROW], ["row-1"], "r"], {}, {}]]


@pytest.mark.parametrize(("built", "reason"), [
    (lambda: message(headers=["task"]), "bad_headers"),
    (lambda: message(headers={**HEADERS, "id": None}), "bad_headers"),
    (lambda: message(content_type="application/x-python-serialize"), "bad_content"),
    (lambda: message(raw=b""), "bad_body"),
    (lambda: message(raw=b"not JSON"), "bad_body"),
    (lambda: message(raw=b"[" * 100_000 + b"]" * 100_000), "too_large"),
    (lambda: message([[[ROW], ["row-1"], "r"], {}]), "bad_body"),
    (lambda: message([[[["a", "b", "c", "d"]], ["row-1"], "r"], {}, {}]), "bad_rows"),
], ids=["headers-a-list", "id-null", "pickle", "empty-body", "not-json", "too-large", "two-parts", "bad-rows"])
def test_a_malformed_message_never_reaches_the_strategy_and_is_acknowledged_logged_and_counted_once(
        built: Any, reason: str, caplog: pytest.LogCaptureFixture, rejected_signals: list[Any]) -> None:
    the_desk = desk()
    with caplog.at_level(logging.WARNING, logger="worker.message_guard"):
        reached, acked = run_guard(built(), the_desk=the_desk)
    assert reached == [] and len(acked) == 1
    assert the_desk.counts[reason] == 1 and sum(the_desk.counts.values()) == 1
    (record,) = caplog.records
    assert record.reason == reason and record.queue == "iris.rows"  # type: ignore[attr-defined]
    assert len(rejected_signals) == 1  # the watchdog hears of it


class Raising:
    """A strategy that raises ``exc``, after acknowledging the message when ``acks_first``."""

    def __init__(self, exc: BaseException, acks_first: bool = False) -> None:
        self.exc = exc
        self.acks_first = acks_first

    def __call__(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        if self.acks_first:
            ack(logging.getLogger("test"), ())
        raise self.exc


def guarded(strategy: Any, the_desk: Desk) -> Any:
    consumer = SimpleNamespace(connection_errors=(ConnectionError,), channel_errors=())
    return guard(strategy, SimpleNamespace(name=names.CLASSIFY_ROWS), the_desk, consumer)  # type: ignore[arg-type]


@pytest.mark.parametrize("acks_first", [False, True], ids=["before-settling", "after-settling"])
def test_what_celerys_strategy_raises_on_a_message_is_counted_and_the_message_settled_once(
        acks_first: bool, caplog: pytest.LogCaptureFixture) -> None:
    the_desk = desk()
    acked: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="worker.message_guard"):
        guarded(Raising(TypeError("unhashable type: 'list'"), acks_first), the_desk)(
            message(), None, lambda *args: acked.append(args), None, [])
    assert the_desk.counts["bad_message"] == 1 and len(acked) == 1
    assert "Celery's strategy raised TypeError" in caplog.text and "unhashable" not in caplog.text


@pytest.mark.parametrize("exc", [ConnectionError("broker gone"), InvalidTaskError("eta"), ContentDisallowed("pickle"),
                                 MemoryError()], ids=["broker", "invalid", "refused-content", "memory"])
def test_broker_errors_and_what_celery_refuses_itself_are_left_to_celery(exc: Exception) -> None:
    the_desk = desk()
    with pytest.raises(type(exc)):
        guarded(Raising(exc), the_desk)(message(), None, lambda *args: None, None, [])
    assert sum(the_desk.counts.values()) == 0


def test_a_body_over_the_limit_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(message: Any) -> Any:
        raise AssertionError("decoded")

    monkeypatch.setattr(fast_strategy, "decode", no_decoding)
    the_desk = desk()
    big = message([[[ROW] * 200, ["a"] * 200, "r"], {}, {}])  # 2048 bytes allowed
    reached, _ = run_guard(big, the_desk=the_desk)
    assert reached == [] and the_desk.counts["too_large"] == 1


def test_the_log_line_names_the_task_and_its_id_never_the_body(caplog: pytest.LogCaptureFixture) -> None:
    secret = "redis://:hunter2@redis:6379/0"
    bad = message([[[[secret, 1, 1, 1]], ["row-1"], "r"], {}, {}])
    with caplog.at_level(logging.WARNING, logger="worker.message_guard"):
        run_guard(bad)
    (record,) = caplog.records
    assert record.task == names.CLASSIFY_ROWS and record.task_id == "batch-1"  # type: ignore[attr-defined]
    assert "hunter2" not in caplog.text and "1, 1, 1" not in caplog.text


def test_a_refused_public_task_gets_a_failure_under_its_id() -> None:
    backend = Backend()
    run_guard(message([[], {}], headers={**HEADERS, "task": names.CLASSIFY, "id": "public-1"}), names.CLASSIFY,
              desk(backend=backend))
    [(task_id, failure, state)] = backend.stored
    assert (task_id, state) == ("public-1", "FAILURE") and isinstance(failure, PayloadValidationError)
    assert "bad_body" in str(failure)


def test_a_refused_internal_task_or_one_that_ignores_its_result_stores_nothing() -> None:
    backend = Backend()
    run_guard(message([[], {}]), names.CLASSIFY_ROWS, desk(backend=backend))
    run_guard(message([[], {}], headers={**HEADERS, "task": names.CLASSIFY, "ignore_result": True}),
              names.CLASSIFY, desk(backend=backend))
    assert backend.stored == []


def test_a_backend_that_fails_costs_the_failure_result_not_the_consumer(caplog: pytest.LogCaptureFixture) -> None:
    the_desk = desk(backend=Backend(fails=ConnectionError("redis://:hunter2@redis:6379/1 is down")))
    with caplog.at_level(logging.WARNING, logger="worker.message_guard"):
        the_desk.reject("bad_body", "no body", {"task": names.CLASSIFY, "id": "public-1"}, "iris")
    assert the_desk.counts["bad_body"] == 1
    assert "could not store the refusal of task public-1" in caplog.text and "hunter2" not in caplog.text


def test_a_result_key_written_to_fail_celerys_decoding_costs_the_failure_result_not_the_consumer(
        caplog: pytest.LogCaptureFixture) -> None:
    # Why the desk's store stays broad: Celery reads what the key holds first, and whoever can push a message can
    # write it, down to the decompressor Celery picks from the value itself (zlib.error here).
    app = Celery("test", backend="cache+memory://", set_as_current=False)  # a process-wide cache: a key of its own
    task_id = f"public-{uuid.uuid4()}"
    key = app.backend.get_key_for_task(task_id)
    app.backend.set(key, b"\x00celery-compressed\x00application/x-gzip\x00not gzip")
    the_desk = Desk(app, LIMITS)
    with caplog.at_level(logging.WARNING, logger="worker.message_guard"):
        the_desk.reject("bad_body", "no body", {"task": names.CLASSIFY, "id": task_id}, "iris")
    app.backend.delete(key)
    assert the_desk.counts["bad_body"] == 1
    assert f"could not store the refusal of task {task_id}: Error -3 while decompressing data" in caplog.text


def test_a_batch_too_large_for_the_transport_fails_naming_the_row_limit() -> None:
    backend = Backend()
    desk(backend=backend).dropped("too_large", "9999999 bytes, over the 4096-byte limit",
                                  {"task": names.CLASSIFY_BATCH, "id": "big-1"}, "iris")
    [(task_id, failure, _)] = backend.stored
    assert task_id == "big-1" and "takes at most 10 rows" in str(failure)


def test_an_overlong_task_id_is_neither_logged_nor_stored(caplog: pytest.LogCaptureFixture) -> None:
    backend = Backend()
    with caplog.at_level(logging.WARNING, logger="worker.message_guard"):
        desk(backend=backend).reject("bad_body", "x", {"task": names.CLASSIFY, "id": "i" * 10_000}, "iris")
    assert backend.stored == [] and "i" * 256 not in caplog.text


# The consumer: Celery 5.7's hooks it overrides, and what each override does.

def test_celerys_consumer_routes_unroutable_messages_through_the_hooks_the_guard_overrides() -> None:
    handler = inspect.getsource(celery_consumer.Consumer.create_task_handler)
    for hook in ("on_unknown_message(", "on_unknown_task(", "on_invalid_task(", "self.on_decode_error("):
        assert hook in handler
    strategies = inspect.getsource(celery_consumer.Consumer.update_strategies)
    assert "self.strategies[name] = task.start_strategy(self.app, self)" in strategies


class Received:
    """A message stub that records how the consumer settled it."""

    def __init__(self, headers: Any) -> None:
        self.headers = headers
        self.delivery_info = {"routing_key": "iris"}
        self.settled: list[str] = []

    def reject_log_error(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        self.settled.append("rejected")

    def ack_log_error(self, logger: Any, errors: Any) -> None:
        self.settled.append("acked")


@pytest.fixture
def installed() -> Iterator[tuple[Desk, Backend]]:
    """The guard installed on an app whose backend records what it stores."""
    app = Celery("test", broker="memory://", set_as_current=False)
    app.conf.broker_transport = FAST_TRANSPORT
    backend = Backend()
    the_desk = message_guard.install(app, Settings(batch_max_rows=10, batch_max_size=4))
    the_desk.app = SimpleNamespace(backend=backend)  # type: ignore[assignment]
    yield the_desk, backend
    brpop.listen(None)
    message_guard._desk = None


def consumer() -> Consumer:
    made = object.__new__(Consumer)
    made.connection_errors = (OSError,)
    return made


def test_an_unknown_task_is_counted_rejected_and_failed_as_not_registered(installed: tuple[Desk, Backend]) -> None:
    the_desk, backend = installed
    received = Received({"task": "iris.nope", "id": "t-1"})
    consumer().on_unknown_task(None, received, KeyError("iris.nope"))
    assert received.settled == ["rejected"] and the_desk.counts["unknown_task"] == 1
    [(task_id, failure, _)] = backend.stored
    assert task_id == "t-1" and isinstance(failure, NotRegistered)


@pytest.mark.parametrize(("hook", "reason", "settled"), [
    (lambda c, m: c.on_unknown_message(None, m), "bad_headers", "rejected"),
    (lambda c, m: c.on_invalid_task(None, m, ContentDisallowed("pickle")), "bad_content", "rejected"),
    (lambda c, m: c.on_invalid_task(None, m, ValueError("eta")), "bad_headers", "rejected"),
    (lambda c, m: c.on_decode_error(m, ValueError("body")), "bad_body", "acked"),
], ids=["no-task-name", "refused-content", "invalid", "undecodable"])
def test_a_message_celery_cannot_route_is_counted_and_settled_once(
        installed: tuple[Desk, Backend], hook: Any, reason: str, settled: str) -> None:
    the_desk, _ = installed
    received = Received({"id": "t-1"})
    hook(consumer(), received)
    assert received.settled == [settled] and the_desk.counts[reason] == 1


def test_a_task_name_that_is_not_a_string_is_an_unknown_task_not_a_crash() -> None:
    assert celery_consumer.Consumer.Strategies is dict and Consumer.Strategies is not dict
    strategies = Consumer.Strategies({names.CLASSIFY: "strategy"})
    assert strategies[names.CLASSIFY] == "strategy"
    for name in (["iris.classify"], {"name": "iris.classify"}, None, 5):
        with pytest.raises(KeyError):  # what Celery's handler refuses as an unknown task
            strategies[name]
    assert "except KeyError as exc:\n                return on_unknown_task(" in inspect.getsource(
        celery_consumer.Consumer.create_task_handler)


def test_every_strategy_the_consumer_builds_is_put_behind_the_guard(
        installed: tuple[Desk, Backend], monkeypatch: pytest.MonkeyPatch) -> None:
    def built(self: Any) -> None:
        self.strategies = {names.CLASSIFY: "celery's", "celery.backend_cleanup": "celery's"}

    monkeypatch.setattr(celery_consumer.Consumer, "update_strategies", built)
    made = consumer()
    made.app = SimpleNamespace(tasks={names.CLASSIFY: SimpleNamespace(name=names.CLASSIFY),
                                      "celery.backend_cleanup": SimpleNamespace(name="celery.backend_cleanup")})
    made.update_strategies()
    assert set(made.strategies) == {names.CLASSIFY, "celery.backend_cleanup"}
    assert all(callable(handler) and handler.__qualname__ == "guard.<locals>.handle"
               for handler in made.strategies.values())


def test_install_sets_the_consumer_the_transport_limit_and_the_listener(installed: tuple[Desk, Backend]) -> None:
    app = Celery("test", broker="memory://", set_as_current=False)
    app.conf.broker_transport = FAST_TRANSPORT
    app.conf.broker_transport_options = {"visibility_timeout": 120}
    installed_desk = message_guard.install(app, Settings(batch_max_rows=10, batch_max_size=4))
    assert app.conf.worker_consumer == "worker.message_guard:Consumer"
    assert app.conf.broker_transport_options == {"visibility_timeout": 120,
                                                 "max_message_bytes": installed_desk.limits.message_bytes}
    assert brpop._listener == installed_desk.dropped


def test_install_leaves_other_brokers_transport_options_alone() -> None:
    app = Celery("test", broker="amqp://", set_as_current=False)
    try:
        message_guard.install(app, Settings())
        assert "max_message_bytes" not in (app.conf.broker_transport_options or {})
    finally:
        brpop.listen(None)
        message_guard._desk = None
