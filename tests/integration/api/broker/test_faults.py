"""Redis stopped or frozen: every endpoint answers a 503 envelope with Retry-After within 5 s, and the API
serves again once Redis is back, without a restart. Each test runs its own redis-server."""

import json
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api import create_app
from api.extension import KEY
from tests.helpers import SEED_EXAMPLE, RedisServer, WorkerProcess, make_settings, wait_until_ready

pytestmark = pytest.mark.integration

BUDGET_SECONDS = 5.0  # the issue's bound on any answer while Redis is down


def redis_paths(task_id: str) -> dict[str, Callable[[FlaskClient], TestResponse]]:
    """Return every endpoint that needs Redis, by name."""
    return {
        "classify": lambda c: c.post("/v1/classify", json=SEED_EXAMPLE),
        "classify_async": lambda c: c.post("/v1/classify/async", json=SEED_EXAMPLE),
        "classify_batch": lambda c: c.post("/v1/classify/batch", json={"instances": [SEED_EXAMPLE] * 2}),
        "task_status": lambda c: c.get(f"/v1/tasks/{task_id}"),
        "readyz": lambda c: c.get("/readyz"),
    }


def assert_every_endpoint_fails_fast(app: Flask, task_id: str) -> None:
    """Check each Redis path on its own (no fail-fast memory between them), then /livez."""
    client, circuit = app.test_client(), app.extensions[KEY].circuit
    opened_for = circuit.open_seconds
    circuit.open_seconds = 0  # so each endpoint waits on Redis itself rather than on the last one's failure
    try:
        for name, call in redis_paths(task_id).items():
            started = time.monotonic()
            resp = call(client)
            elapsed = time.monotonic() - started
            body = resp.get_json()
            assert resp.status_code == 503, (name, resp.status_code, body)
            assert resp.headers["Retry-After"] == "1", name
            assert body["message"] == "failed" and body["error"]["code"] == "503", (name, body)
            assert resp.headers["X-Request-ID"], name
            assert elapsed < BUDGET_SECONDS, (name, elapsed)
    finally:
        circuit.open_seconds = opened_for
    assert client.get("/livez").status_code == 200


def issue_pending_task(env: dict[str, str]) -> str:
    """Queue one async task through another app instance (so the app under test stays cold); return its id."""
    resp = create_app(make_settings(env)).test_client().post("/v1/classify/async", json=SEED_EXAMPLE)
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["data"]["task_id"])


def serve_everything(client: FlaskClient, task_id: str) -> None:
    """Answer every endpoint with a worker up, so the app holds warm connections and channels."""
    for name, call in redis_paths(task_id).items():
        resp = call(client)
        assert resp.status_code in (200, 202), (name, resp.get_json())


@pytest.fixture
def worker(private_env: dict[str, str]) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(private_env).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("fault", ["stop", "pause"])
def test_a_cold_api_answers_503_fast_on_every_endpoint_while_redis_is_down(
        private_env: dict[str, str], private_redis: RedisServer, fault: str) -> None:
    task_id = issue_pending_task(private_env)
    app = create_app(make_settings(private_env))
    getattr(private_redis, fault)()
    try:
        assert_every_endpoint_fails_fast(app, task_id)
    finally:
        private_redis.resume()


@pytest.mark.parametrize("fault", ["stop", "pause"])
def test_a_warm_api_answers_503_fast_while_redis_is_down_and_serves_again_after(
        private_env: dict[str, str], private_redis: RedisServer, worker: WorkerProcess, fault: str) -> None:
    app = create_app(make_settings(private_env))
    client = app.test_client()
    task_id = issue_pending_task(private_env)
    serve_everything(client, task_id)

    getattr(private_redis, fault)()
    try:
        assert_every_endpoint_fails_fast(app, task_id)
    finally:
        if fault == "stop":
            private_redis.start()
        else:
            private_redis.resume()

    wait_until_ready(client, timeout=30)  # after Redis came back
    serve_everything(client, task_id)
    assert client.get(f"/v1/tasks/{task_id}").get_json()["data"]["status"] == "SUCCESS"


def test_after_one_failure_the_next_requests_answer_503_without_waiting_on_redis(
        private_env: dict[str, str], private_redis: RedisServer) -> None:
    client = create_app(make_settings(private_env, api_redis_timeout_seconds=1.5)).test_client()
    private_redis.pause()
    try:
        first = client.post("/v1/classify/async", json=SEED_EXAMPLE)
        started = time.monotonic()
        then = [client.post("/v1/classify", json=SEED_EXAMPLE), client.get("/readyz")]
        elapsed = time.monotonic() - started
    finally:
        private_redis.resume()
    assert [r.status_code for r in [first, *then]] == [503, 503, 503]
    assert elapsed < 1.5  # one Redis timeout is 1.5 s here: the later requests did not wait for one


def test_the_request_id_reaches_the_worker_log_lines_of_its_task(private_env: dict[str, str]) -> None:
    worker = WorkerProcess(private_env, extra=("-l", "info")).start()
    client = create_app(make_settings(private_env)).test_client()
    try:
        sync = client.post("/v1/classify", json=SEED_EXAMPLE, headers={"X-Request-ID": "trace-sync-1"})
        queued = client.post("/v1/classify/async", json=SEED_EXAMPLE, headers={"X-Request-ID": "trace-async-1"})
        assert sync.status_code == 200 and queued.status_code == 202
        assert sync.headers["X-Request-ID"] == "trace-sync-1"
        status_url = queued.headers["Location"]
        deadline = time.monotonic() + 30
        while client.get(status_url).get_json()["data"]["status"] != "SUCCESS":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.stderr is not None
    lines = [json.loads(line) for line in worker.proc.stderr.read().decode().splitlines() if line.startswith("{")]
    rows = [line for line in lines if line["message"].startswith("iris.classify_rows")]
    assert any(line["request_ids"] == ["trace-sync-1"] and line["task_ids"] == [sync.get_json()["data"]["task_id"]]
               for line in rows), rows
    single = [line for line in lines if line.get("request_id") == "trace-async-1"]
    assert single and all(line["task_id"] == queued.get_json()["data"]["task_id"] for line in single)
