"""The Celery bypass: what it writes is what Celery 5.7 writes, and FAST_PATHS=0 uses documented calls only."""

import datetime
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import celery
import orjson
import pytest
import redis
from celery import states
from celery.backends.cache import CacheBackend
from celery.backends.redis import RedisBackend

from shared.celery_app import create_celery
from shared.settings import Settings
from worker.fastpaths.store_result import _STORE_AND_REPLY, _meta, date_done_now, store_many

# Nothing listens here: a backend builds its client lazily, and these tests replace it before any call.
URL = "redis://127.0.0.1:1/1"
NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
ROW = {"pred_label": "Iris-virginica", "pred_confidence": 0.95, "probabilities": {"Iris-virginica": 0.95}}


class RecordingClient:
    """A redis.Redis stand-in that records script calls and pipelined commands."""

    def __init__(self) -> None:
        self.script_calls: list[dict[str, Any]] = []
        self.piped: list[tuple[Any, ...]] = []

    def register_script(self, script: str) -> Any:
        return lambda keys, args: self.script_calls.append({"script": script, "keys": keys, "args": args})

    def pipeline(self, transaction: bool = True) -> "RecordingClient":
        return self

    def expire(self, key: bytes, seconds: int) -> None:
        self.piped.append(("expire", key, seconds))

    def publish(self, channel: str, message: bytes) -> None:
        self.piped.append(("publish", channel, message))

    def execute(self) -> None:
        self.piped.append(("execute",))

    def __enter__(self) -> "RecordingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisBackend]:
    """A Redis result backend configured by create_celery, its clock fixed at NOW."""
    app = create_celery(Settings(celery_broker_url=URL, celery_result_backend=URL))
    monkeypatch.setattr(app, "now", lambda: NOW)
    monkeypatch.setattr("worker.fastpaths.store_result.date_done_now", lambda _app: NOW.isoformat())
    yield RedisBackend(app=app, url=URL)


def celerys_meta(backend: RedisBackend, task_id: str, result: Any, state: str) -> dict[str, Any]:
    """Build the meta Celery's own _store_result writes for a task with no children."""
    meta: dict[str, Any] = backend._get_result_meta(result=backend.encode_result(result, state), state=state,
                                                    traceback=None, request=SimpleNamespace(children=[]))
    meta["task_id"] = task_id
    return meta


def test_celery_is_the_5_7_series_the_bypass_was_written_against() -> None:
    assert celery.__version__.startswith("5.7."), "re-run this contract against the new Celery, then update the pin"


def test_a_success_is_written_exactly_as_celery_writes_it(backend: RedisBackend) -> None:
    ours = _meta(backend, "id-1", ROW, states.SUCCESS, NOW.isoformat())
    assert ours == celerys_meta(backend, "id-1", ROW, states.SUCCESS)
    assert backend.decode(orjson.dumps(ours)) == backend.decode(backend.encode(ours))


def test_a_failure_is_written_as_celery_writes_an_exception(backend: RedisBackend) -> None:
    error = ValueError("bad row")
    ours = _meta(backend, "id-1", error, states.FAILURE, NOW.isoformat())
    assert ours == celerys_meta(backend, "id-1", error, states.FAILURE)
    read = backend.decode_result(orjson.dumps(ours))["result"]
    assert type(read) is ValueError and read.args == ("bad row",)


@pytest.mark.parametrize("zone", [None, "Europe/Paris"])
def test_date_done_is_celerys_now_in_the_apps_timezone(zone: str | None) -> None:
    app = create_celery(Settings(celery_broker_url=URL, celery_result_backend=URL))
    if zone is not None:
        app.conf.timezone = zone
    ours, celerys = datetime.datetime.fromisoformat(date_done_now(app)), app.now()
    assert ours.utcoffset() == celerys.utcoffset() and ours.tzinfo is not None
    assert abs((ours - celerys).total_seconds()) < 1
    assert len(date_done_now(app)) == len(celerys.replace(microsecond=1).isoformat())  # microseconds, offset


def test_the_backend_has_what_the_bypass_reads(backend: RedisBackend) -> None:
    assert backend.get_key_for_task("id-1") == b"celery-task-meta-id-1"
    assert isinstance(backend.client, redis.Redis)
    assert backend.expires == Settings().result_expires_seconds  # result_expires, in seconds
    assert backend.failure_expires == backend.expires  # the script gives failures the same TTL
    assert backend.prepare_exception(ValueError("x")) == {"exc_type": "ValueError", "exc_message": ("x",),
                                                          "exc_module": "builtins"}


def test_celery_never_overwrites_a_stored_success(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rule the script keeps, from BaseKeyValueStoreBackend._store_result, run on an in-memory store.
    stored: dict[bytes, bytes] = {}
    monkeypatch.setattr(backend, "get", stored.get)
    monkeypatch.setattr(backend, "set", lambda key, value, expires=None: stored.__setitem__(key, value))
    backend.store_result("failed-first", ValueError("x"), states.FAILURE)
    backend.store_result("failed-first", ROW, states.SUCCESS)
    backend.store_result("won-first", ROW, states.SUCCESS)
    backend.store_result("won-first", ValueError("x"), states.FAILURE)
    assert backend.get_task_meta("failed-first")["status"] == states.SUCCESS
    won = backend.get_task_meta("won-first")
    assert (won["status"], won["result"]) == (states.SUCCESS, ROW)


def test_the_script_matches_success_as_celery_and_orjson_spell_it(backend: RedisBackend) -> None:
    meta = celerys_meta(backend, "id-1", ROW, states.SUCCESS)
    assert '"status": "SUCCESS"' in backend.encode(meta) and '"status": "SUCCESS"' in _STORE_AND_REPLY
    assert b'"status":"SUCCESS"' in orjson.dumps(meta) and '"status":"SUCCESS"' in _STORE_AND_REPLY


def test_the_fast_path_stores_a_batch_and_its_reply_in_one_script_call(backend: RedisBackend,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client = RecordingClient()
    monkeypatch.setattr(backend, "client", client)
    store_many(backend, ["a", "b"], [ROW, {**ROW, "pred_label": "x"}], states.SUCCESS, ("reply:1", b"msg"), 120)
    (call,) = client.script_calls
    assert call["keys"] == [b"celery-task-meta-a", b"celery-task-meta-b"]
    assert call["args"][:5] == [2, 120, 0, "reply:1", b"msg"]  # 2 rows, kept 120 s, none held shorter
    assert [orjson.loads(value) for value in call["args"][5:]] == [
        celerys_meta(backend, "a", ROW, states.SUCCESS), celerys_meta(backend, "b", {**ROW, "pred_label": "x"},
                                                                      states.SUCCESS)]
    assert client.piped == []


def test_with_marks_the_script_gets_each_rows_mark_key_and_the_hold(backend: RedisBackend,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client = RecordingClient()
    monkeypatch.setattr(backend, "client", client)
    store_many(backend, ["a", "b"], [ROW, ROW], states.SUCCESS, ("reply:1", b"msg"), 600, hold=15,
               marks="iris:task:")
    (call,) = client.script_calls
    assert call["keys"] == [b"celery-task-meta-a", b"celery-task-meta-b", "iris:task:a", "iris:task:b"]
    assert call["args"][:3] == [2, 600, 15]


def test_with_fast_paths_off_only_store_result_and_a_pipeline_are_used(backend: RedisBackend,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client, stored = RecordingClient(), []
    monkeypatch.setattr(backend, "client", client)
    monkeypatch.setattr(backend, "store_result", lambda *args: stored.append(args))
    error = ValueError("x")
    store_many(backend, ["a", "b"], [error, error], states.FAILURE, ("reply:1", b"msg"), 120, fast=False)
    assert stored == [("a", error, states.FAILURE), ("b", error, states.FAILURE)]
    assert client.piped == [("expire", b"celery-task-meta-a", 120), ("expire", b"celery-task-meta-b", 120),
                            ("publish", "reply:1", b"msg"), ("execute",)]
    assert client.script_calls == []


def test_backends_without_redis_store_each_result_through_celery() -> None:
    app = create_celery(Settings())
    backend = CacheBackend(app=app, backend="memory://")
    store_many(backend, ["a", "b"], [ROW, {"n": 2}], states.SUCCESS, ("reply:1", b"msg"), 120)
    assert backend.get_task_meta("a")["result"] == ROW and backend.get_task_meta("b")["result"] == {"n": 2}
