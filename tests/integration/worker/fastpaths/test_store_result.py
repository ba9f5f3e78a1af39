"""Storing a batch's results on a real Redis, by the Lua script and by FAST_PATHS=0's documented calls alike."""

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from celery import Celery, states
from celery.result import AsyncResult

from shared.celery_app import create_celery
from shared.settings import Settings
from worker.fastpaths.store_result import store_many

pytestmark = pytest.mark.integration

# A database of its own, emptied before and after: nothing else in the suite uses it.
RESULTS_DB = 12
PATHS = pytest.mark.parametrize("fast", [True, False], ids=["script", "documented"])


@pytest.fixture
def app(redis_base: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(var, raising=False)  # Celery would read these over the URLs below
    url = f"{redis_base}/{RESULTS_DB}"
    app = create_celery(Settings(celery_broker_url=url, celery_result_backend=url))
    app.backend.client.flushdb()
    yield app
    app.backend.client.flushdb()


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


@PATHS
def test_each_id_gets_its_own_result_readable_by_celery_with_the_ttl_given(app: Celery, fast: bool) -> None:
    task_ids = ids(3)
    store_many(app.backend, task_ids, [{"n": 0}, {"n": 1}, {"n": 2}], states.SUCCESS, expires=120, fast=fast)
    for n, task_id in enumerate(task_ids):
        result = AsyncResult(task_id, app=app)
        assert result.state == states.SUCCESS and result.result == {"n": n}
        assert app.backend.get_task_meta(task_id)["task_id"] == task_id
        # 120 s, not the backend's result_expires of an hour.
        assert 0 < app.backend.client.ttl(app.backend.get_key_for_task(task_id)) <= 120


@PATHS
def test_the_reply_is_published_once_on_its_channel(app: Celery, fast: bool) -> None:
    pubsub = app.backend.client.pubsub()
    pubsub.subscribe("iris:reply:test")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # Redis confirmed: nothing can be missed
    task_ids = ids(2)
    reply = orjson.dumps({"ids": task_ids, "results": [1, 2]})
    store_many(app.backend, task_ids, [1, 2], states.SUCCESS, reply=("iris:reply:test", reply), expires=60, fast=fast)
    deadline = time.monotonic() + 5
    messages: list[bytes] = []
    while time.monotonic() < deadline and not messages:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            messages.append(message["data"])
    assert messages == [reply]
    assert pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    pubsub.close()


@PATHS
def test_failures_are_stored_as_celery_exceptions(app: Celery, fast: bool) -> None:
    (task_id,) = ids(1)
    store_many(app.backend, [task_id], [ValueError("bad row")], states.FAILURE, expires=60, fast=fast)
    result = AsyncResult(task_id, app=app)
    assert result.state == states.FAILURE
    assert isinstance(result.result, ValueError) and "bad row" in str(result.result)


@PATHS
def test_no_expiry_stores_without_a_ttl(app: Celery, fast: bool) -> None:
    app.backend.expires = None
    (task_id,) = ids(1)
    store_many(app.backend, [task_id], [{"n": 1}], states.SUCCESS, fast=fast)
    assert app.backend.client.ttl(app.backend.get_key_for_task(task_id)) == -1


@pytest.mark.parametrize("first_fast", [True, False], ids=["stored-by-script", "stored-by-celery"])
@PATHS
def test_a_stored_success_survives_a_later_failure(app: Celery, first_fast: bool, fast: bool) -> None:
    answered, fresh = ids(2)
    store_many(app.backend, [answered], [{"n": 1}], states.SUCCESS, expires=60, fast=first_fast)
    # A redelivered batch that fails now: the row answered before keeps its answer, the new row gets the failure.
    store_many(app.backend, [answered, fresh], [ValueError("late")] * 2, states.FAILURE, expires=60, fast=fast)
    assert app.backend.get_task_meta(answered)["status"] == states.SUCCESS
    assert AsyncResult(answered, app=app).result == {"n": 1}
    assert AsyncResult(fresh, app=app).state == states.FAILURE


@PATHS
def test_a_stored_failure_is_replaced_by_a_later_success(app: Celery, fast: bool) -> None:
    (task_id,) = ids(1)
    store_many(app.backend, [task_id], [ValueError("first")], states.FAILURE, expires=60, fast=fast)
    store_many(app.backend, [task_id], [{"n": 2}], states.SUCCESS, expires=60, fast=fast)
    assert AsyncResult(task_id, app=app).result == {"n": 2}


def test_an_undecodable_value_naming_success_is_kept_too(app: Celery) -> None:
    (task_id,) = ids(1)
    key = app.backend.get_key_for_task(task_id)
    # Not JSON cjson reads, so the script falls back to matching the status as Celery's JSON spells it.
    app.backend.client.set(key, b'{"status": "SUCCESS", "result": 1, oops')
    store_many(app.backend, [task_id], [ValueError("late")], states.FAILURE, expires=60)
    assert app.backend.client.get(key) == b'{"status": "SUCCESS", "result": 1, oops'


@PATHS
def test_an_unmarked_row_is_held_briefly_and_a_marked_one_kept_for_its_poll_url(app: Celery, fast: bool) -> None:
    waited, timed_out = ids(2)
    client = app.backend.client
    client.set(f"iris-test:task:{timed_out}", b"1", ex=60)  # the API marks a row whose wait ended unanswered
    store_many(app.backend, [waited, timed_out], [{"n": 0}, {"n": 1}], states.SUCCESS, expires=600, fast=fast,
               hold=15, marks="iris-test:task:")
    assert 0 < client.ttl(app.backend.get_key_for_task(waited)) <= 15
    assert 15 < client.ttl(app.backend.get_key_for_task(timed_out)) <= 600
    assert [AsyncResult(task_id, app=app).result for task_id in (waited, timed_out)] == [{"n": 0}, {"n": 1}]
