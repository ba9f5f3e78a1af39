"""The API's result backend: Celery's Redis backend without the subscription send_task opens per task.

A contract test of the Celery hook it overrides (``on_task_call``, Celery 5.7): if stock Celery stops
subscribing there, or our override stops taking effect, one of these fails.
"""

import uuid

import redis
from celery import Celery
from celery.result import AsyncResult

from api.broker.results_backend import PollingRedisBackend, polling_backend_url
from tests.conftest import BACKEND_DB, LONELY_BROKER_DB


def _subscribers(redis_base: str, app: Celery, task_id: str) -> int:
    channel = app.backend.get_key_for_task(task_id)
    counts = redis.Redis.from_url(f"{redis_base}/{BACKEND_DB}").pubsub_numsub(channel)
    return int(counts[0][1])


def _send(backend_url: str, broker_url: str) -> tuple[Celery, str, AsyncResult]:
    """Send a task and keep its result handle: dropping it would unsubscribe (AsyncResult.__del__)."""
    app = Celery("contract", broker=broker_url, backend=backend_url, set_as_current=False)
    task_id = str(uuid.uuid4())
    result = app.send_task("iris.contract_probe", task_id=task_id, queue="iris-contract")
    return app, task_id, result


def test_stock_celery_subscribes_to_every_task_it_sends(redis_base: str) -> None:
    app, task_id, _result = _send(f"{redis_base}/{BACKEND_DB}", f"{redis_base}/{LONELY_BROKER_DB}")
    try:
        assert _subscribers(redis_base, app, task_id) == 1
    finally:
        app.close()
        redis.Redis.from_url(f"{redis_base}/{LONELY_BROKER_DB}").delete("iris-contract")


def test_the_api_backend_sends_without_subscribing(redis_base: str) -> None:
    app, task_id, _result = _send(polling_backend_url(f"{redis_base}/{BACKEND_DB}"), f"{redis_base}/{LONELY_BROKER_DB}")
    try:
        assert isinstance(app.backend, PollingRedisBackend)
        assert _subscribers(redis_base, app, task_id) == 0
    finally:
        app.close()
        redis.Redis.from_url(f"{redis_base}/{LONELY_BROKER_DB}").delete("iris-contract")


def test_only_redis_urls_get_the_polling_backend() -> None:
    assert polling_backend_url("rediss://h:6380/1?ssl_cert_reqs=required").startswith(
        "api.broker.results_backend:PollingRedisBackend+rediss://h:6380/1")
    assert polling_backend_url("db+postgresql://h/db") == "db+postgresql://h/db"
