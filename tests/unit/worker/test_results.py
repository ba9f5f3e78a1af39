"""Storing a batch's results: Celery's format under each id, with a TTL, and one reply message."""

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis
from celery import Celery, states
from celery.result import AsyncResult

from shared.celery_app import create_celery
from shared.settings import Settings
from worker.results import store_many

# A database of its own, emptied before and after: nothing else in the suite uses it.
RESULTS_DB = 12


@pytest.fixture
def app(redis_base: str) -> Iterator[Celery]:
    url = f"{redis_base}/{RESULTS_DB}"
    app = create_celery(Settings(celery_broker_url=url, celery_result_backend=url))
    app.backend.client.flushdb()
    yield app
    app.backend.client.flushdb()


def test_each_id_gets_its_own_result_readable_by_celery_with_a_ttl(app: Celery) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    store_many(app.backend, ids, [{"n": 0}, {"n": 1}, {"n": 2}], states.SUCCESS, expires=120)
    for n, task_id in enumerate(ids):
        result = AsyncResult(task_id, app=app)
        assert result.state == states.SUCCESS and result.result == {"n": n}
        assert 0 < app.backend.client.ttl(app.backend.get_key_for_task(task_id)) <= 120


def test_the_reply_is_published_once_on_its_channel(app: Celery) -> None:
    pubsub = app.backend.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("iris:reply:test")
    time.sleep(0.1)
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    reply = orjson.dumps({"ids": ids, "results": [1, 2]})
    store_many(app.backend, ids, [1, 2], states.SUCCESS, reply=("iris:reply:test", reply), expires=60)
    deadline = time.monotonic() + 2
    messages = []
    while time.monotonic() < deadline and not messages:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            messages.append(message["data"])
    assert messages == [reply]
    assert pubsub.get_message(timeout=0.2) is None
    pubsub.close()


def test_failures_are_stored_as_celery_exceptions(app: Celery) -> None:
    task_id = str(uuid.uuid4())
    store_many(app.backend, [task_id], [ValueError("bad row")], states.FAILURE, expires=60)
    result = AsyncResult(task_id, app=app)
    assert result.state == states.FAILURE
    assert isinstance(result.result, Exception) and "bad row" in str(result.result)


def test_no_expiry_stores_without_a_ttl(redis_base: str, app: Celery) -> None:
    app.backend.expires = None
    task_id = str(uuid.uuid4())
    store_many(app.backend, [task_id], [{"n": 1}], states.SUCCESS)
    assert redis.Redis.from_url(f"{redis_base}/{RESULTS_DB}").ttl(app.backend.get_key_for_task(task_id)) == -1
