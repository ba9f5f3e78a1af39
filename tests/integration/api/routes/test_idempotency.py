"""Idempotency-Key on POST /v1/classify/async and /batch: one task per key, across API processes and retries."""

import hashlib
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from shared.transport.ledger import ledger_keys
from tests.helpers import SEED_EXAMPLE, WorkerProcess, api_server, make_settings

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
API_KEY, OTHER_KEY = "idempotency-test-key-" + "a" * 16, "idempotency-test-key-" + "b" * 16


@pytest.fixture
def queued(lonely_env: dict[str, str]) -> Iterator[tuple[Settings, redis.Redis, redis.Redis]]:
    """Settings with a queue of this test's own on a broker no worker consumes: what is sent stays there."""
    settings = make_settings(lonely_env, iris_queue=f"iris-idem-{uuid.uuid4().hex[:8]}", sync_timeout_seconds=0.5)
    broker = redis.Redis.from_url(settings.celery_broker_url)
    results = redis.Redis.from_url(settings.celery_result_backend)
    yield settings, broker, results
    broker.delete(settings.iris_queue, settings.rows_queue, *ledger_keys(settings.iris_queue))


def _submit(client: FlaskClient, key: str | None, body: dict[str, Any] = SEED_EXAMPLE,
            path: str = "/v1/classify/async", **headers: str) -> Any:
    return client.post(path, json=body, headers={**({"Idempotency-Key": key} if key else {}), **headers})


def _record(settings: Settings, key: str, api_key: str | None = None) -> str:
    """Name the record of ``key`` as api/web/idempotency.py does: the key digested with its API key's digest."""
    scope = hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""
    return settings.idempotency_prefix + hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()


def test_the_same_key_and_body_answer_the_same_task_and_queue_one_message(queued: Any) -> None:
    settings, broker, _ = queued
    client = create_app(settings).test_client()
    key = uuid.uuid4().hex
    first, second = _submit(client, key), _submit(client, key, dict(reversed(SEED_EXAMPLE.items())))
    assert first.status_code == second.status_code == 202
    assert first.get_json()["data"] == second.get_json()["data"]
    assert first.headers["Location"] == second.headers["Location"] == first.get_json()["data"]["status_url"]
    assert broker.llen(settings.iris_queue) == 1
    assert client.get(first.headers["Location"]).get_json()["data"]["status"] == "PENDING"


def test_the_same_key_with_another_body_is_a_422_and_queues_nothing(queued: Any) -> None:
    settings, broker, _ = queued
    client = create_app(settings).test_client()
    key = uuid.uuid4().hex
    assert _submit(client, key).status_code == 202
    reused = _submit(client, key, SETOSA)
    assert reused.status_code == 422
    error = reused.get_json()["error"]
    assert error["raised"] == "IdempotencyKeyReused" and error["code"] == "422"
    # Another route (batch) or another Callback-URL is another request too.
    assert _submit(client, key, {"instances": [SEED_EXAMPLE]}, "/v1/classify/batch").status_code == 422
    assert broker.llen(settings.iris_queue) == 1 and broker.llen(settings.rows_queue) == 0


def test_a_key_record_lives_idempotency_ttl_seconds_and_holds_no_api_key(lonely_env: dict[str, str],
                                                                        queued: Any) -> None:
    settings, _, results = queued
    keyed = make_settings(lonely_env, iris_queue=settings.iris_queue, idempotency_ttl_seconds=120,
                          api_keys=API_KEY)
    client = create_app(keyed).test_client()
    key = "ttl-" + uuid.uuid4().hex
    assert _submit(client, key, **{"X-API-Key": API_KEY}).status_code == 202
    record = _record(keyed, key, API_KEY)
    assert 110 < results.ttl(record) <= 120
    stored = b"".join([record.encode(), *results.hgetall(record).values()])
    assert API_KEY.encode() not in stored and b"ttl-" not in stored


def test_two_app_instances_racing_with_one_key_queue_one_task(queued: Any) -> None:
    settings, broker, _ = queued
    clients = [create_app(settings).test_client() for _ in range(2)]  # two apps: two processes' state, one Redis
    keys = [uuid.uuid4().hex for _ in range(12)]
    answers: dict[str, list[Any]] = {key: [] for key in keys}
    for key in keys:
        start = threading.Barrier(2)

        def submit(client: FlaskClient, key: str = key, start: threading.Barrier = start) -> Any:
            start.wait()
            return _submit(client, key)

        with ThreadPoolExecutor(2) as pool:
            answers[key] = list(pool.map(submit, clients))
    for key in keys:
        assert [a.status_code for a in answers[key]] == [202, 202]
        assert len({a.get_json()["data"]["task_id"] for a in answers[key]}) == 1
    assert broker.llen(settings.iris_queue) == len(keys)


def test_keys_are_scoped_to_the_api_key_that_sent_them(lonely_env: dict[str, str], queued: Any) -> None:
    settings, broker, _ = queued
    client = create_app(make_settings(lonely_env, iris_queue=settings.iris_queue,
                                      api_keys=f"{API_KEY},{OTHER_KEY}")).test_client()
    key = uuid.uuid4().hex
    mine = _submit(client, key, **{"X-API-Key": API_KEY}).get_json()["data"]["task_id"]
    theirs = _submit(client, key, SETOSA, Authorization=f"Bearer {OTHER_KEY}")
    assert theirs.status_code == 202 and theirs.get_json()["data"]["task_id"] != mine
    assert _submit(client, key, Authorization=f"Bearer {API_KEY}").get_json()["data"]["task_id"] == mine
    assert broker.llen(settings.iris_queue) == 2


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", '"quoted \\" escape"'])
def test_a_malformed_key_is_a_400_and_queues_nothing(queued: Any, value: str) -> None:
    settings, broker, _ = queued
    answer = create_app(settings).test_client().post("/v1/classify/async", json=SEED_EXAMPLE,
                                                     headers=[("Idempotency-Key", value)])
    assert answer.status_code == 400
    assert answer.get_json()["error"]["raised"] == "InvalidIdempotencyKey"
    assert broker.llen(settings.iris_queue) == 0


def test_a_key_of_255_characters_or_quoted_is_taken(queued: Any) -> None:
    settings, broker, _ = queued
    client = create_app(settings).test_client()
    long_key = "k" * 255
    assert _submit(client, long_key).status_code == 202
    quoted = _submit(client, f'"{long_key}"')  # the IETF draft's structured-field string is the same key
    assert quoted.status_code == 202 and broker.llen(settings.iris_queue) == 1


def test_a_failed_publish_releases_the_key_so_a_retry_queues_the_task(lonely_env: dict[str, str],
                                                                     queued: Any) -> None:
    settings, broker, results = queued
    dead = make_settings(lonely_env, iris_queue=settings.iris_queue, celery_broker_url="redis://127.0.0.1:1/0")
    key = uuid.uuid4().hex
    failed = _submit(create_app(dead).test_client(), key)
    assert failed.status_code == 503
    assert not results.exists(_record(settings, key))
    retried = _submit(create_app(settings).test_client(), key)
    assert retried.status_code == 202 and broker.llen(settings.iris_queue) == 1


def test_a_retry_while_the_first_request_answers_waits_for_its_task(queued: Any) -> None:
    settings, broker, results = queued
    client = create_app(settings).test_client()  # SYNC_TIMEOUT_SECONDS 0.5: a retry waits 1.5 s at most
    key = uuid.uuid4().hex
    first = _submit(client, key).get_json()["data"]["task_id"]
    record = _record(settings, key)
    assert results.hget(record, "t") == first.encode()
    results.hset(record, "s", 0)  # as if its first request were still publishing
    started = time.monotonic()
    busy = _submit(client, key)
    assert busy.status_code == 409 and busy.get_json()["error"]["raised"] == "IdempotencyKeyInUse"
    assert busy.headers["Retry-After"] == "1" and time.monotonic() - started < 3
    threading.Timer(0.3, results.hset, (record, "s", 202)).start()  # the first request answers meanwhile
    assert _submit(client, key).get_json()["data"]["task_id"] == first
    assert broker.llen(settings.iris_queue) == 1


def test_a_batch_that_fell_back_to_a_poll_url_answers_the_same_504_again(queued: Any) -> None:
    settings, broker, _ = queued
    client = create_app(settings).test_client()
    key, body = uuid.uuid4().hex, {"instances": [SEED_EXAMPLE, SETOSA]}
    first = _submit(client, key, body, "/v1/classify/batch")
    assert first.status_code == 504
    again = _submit(client, key, body, "/v1/classify/batch")
    assert again.status_code == 504 and again.headers["Location"] == first.headers["Location"]
    assert again.get_json()["data"] == first.get_json()["data"]
    # One table for the worker, and its one resend as a public task: none more for the retry.
    assert broker.llen(settings.rows_queue) == 1 and broker.llen(settings.iris_queue) == 1


def test_a_batch_answered_in_time_answers_the_same_results_again(client: FlaskClient, settings: Settings) -> None:
    key, body = uuid.uuid4().hex, {"instances": [SEED_EXAMPLE, SETOSA]}
    first = _submit(client, key, body, "/v1/classify/batch")
    assert first.status_code == 200
    again = _submit(client, key, body, "/v1/classify/batch")
    assert again.status_code == 200 and again.get_json()["data"] == first.get_json()["data"]
    assert [row["pred_label"] for row in again.get_json()["data"]] == ["Iris-virginica", "Iris-setosa"]
    # Its result kept as long as an async one's, for the retry to read; once gone, a 409 rather than a new task.
    results = redis.Redis.from_url(settings.celery_result_backend)
    meta = f"celery-task-meta-{results.hget(_record(settings, key), 't').decode()}"
    assert settings.row_result_hold_seconds < results.ttl(meta) <= settings.result_expires_seconds
    results.delete(meta)
    expired = _submit(client, key, body, "/v1/classify/batch")
    assert expired.status_code == 409 and expired.get_json()["error"]["raised"] == "IdempotencyResultExpired"


def _post_async(url: str, key: str) -> tuple[int, str]:
    """POST the seed example to ``url``'s async route with ``key``; return the status and the task id."""
    request = urllib.request.Request(f"{url}/v1/classify/async", data=json.dumps(SEED_EXAMPLE).encode(),
                                     headers={"Content-Type": "application/json", "Idempotency-Key": key})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, json.loads(resp.read())["data"]["task_id"]


def test_two_real_api_processes_racing_with_one_key_queue_one_task(stack_env: dict[str, str],
                                                                   worker: WorkerProcess) -> None:
    """Two granian servers (two processes, their own connections) get each key at the same instant."""
    queue = f"iris-idem-{uuid.uuid4().hex[:8]}"  # no worker consumes it: what is queued stays there
    env = {**stack_env, "IRIS_QUEUE": queue}
    broker = redis.Redis.from_url(stack_env["CELERY_BROKER_URL"])
    try:
        with api_server(env, server="granian", WEB_CONCURRENCY="1") as one, \
                api_server(env, server="granian", WEB_CONCURRENCY="1") as two:
            keys = [uuid.uuid4().hex for _ in range(8)]
            for key in keys:
                start = threading.Barrier(2)

                def submit(url: str, key: str = key, start: threading.Barrier = start) -> tuple[int, str]:
                    start.wait()
                    return _post_async(url, key)

                with ThreadPoolExecutor(2) as pool:
                    answers = list(pool.map(submit, (one, two)))
                assert [status for status, _ in answers] == [202, 202]
                assert answers[0][1] == answers[1][1]
            assert broker.llen(queue) == len(keys)
    finally:
        broker.delete(queue, *ledger_keys(queue))
