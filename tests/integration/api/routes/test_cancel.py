"""DELETE /v1/tasks/<id>: a queued task is revoked and never runs, even when no worker heard the cancel."""

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from flask.testing import FlaskClient

from api import create_app
from shared import revocation
from shared.celery_app import create_celery
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE, WorkerProcess, make_settings, poll_until_done

API_KEY = "cancel-test-key-" + "c" * 16


@pytest.fixture
def stopped(lonely_env: dict[str, str]) -> Iterator[tuple[Settings, FlaskClient, redis.Redis]]:
    """An app whose queue no worker consumes yet: a task sent there is certainly queued."""
    settings = make_settings(lonely_env, iris_queue=f"iris-cancel-{uuid.uuid4().hex[:8]}", sync_timeout_seconds=0.5)
    broker = redis.Redis.from_url(settings.celery_broker_url)
    yield settings, create_app(settings).test_client(), broker
    broker.delete(settings.iris_queue, settings.rows_queue)


def _queue(client: FlaskClient) -> str:
    answer = client.post("/v1/classify/async", json=SEED_EXAMPLE)
    assert answer.status_code == 202
    return str(answer.get_json()["data"]["task_id"])


def _revoked_on(app: Any, hostname: str, timeout: float = 10) -> list[str]:
    """Return the ids the worker's remote control lists as revoked, once it lists any."""
    deadline = time.monotonic() + timeout
    while not (listed := (app.control.inspect([hostname], timeout=1).revoked() or {}).get(hostname)):
        assert time.monotonic() < deadline, f"{hostname} lists no revoked task"
    return list(listed)


def test_a_cancelled_task_never_runs_when_its_worker_comes_back(lonely_env: dict[str, str], stopped: Any) -> None:
    settings, client, broker = stopped
    cancelled = _queue(client)
    assert broker.llen(settings.iris_queue) == 1  # queued, and no worker has seen it
    answer = client.delete(f"/v1/tasks/{cancelled}")
    assert answer.status_code == 200
    data = answer.get_json()["data"]
    assert data["status"] == "REVOKED" and data["error"]["raised"] == "TaskRevokedError"
    assert client.get(f"/v1/tasks/{cancelled}").get_json()["data"]["status"] == "REVOKED"
    assert client.delete(f"/v1/tasks/{cancelled}").get_json()["data"]["status"] == "REVOKED"  # idempotent
    after = _queue(client)
    worker = WorkerProcess(lonely_env, queue=settings.iris_queue).start()
    try:
        assert poll_until_done(client, f"/v1/tasks/{after}")["status"] == "SUCCESS"
        # The worker took the cancelled task first (FIFO) and left it as the cancel wrote it: it never started.
        assert broker.llen(settings.iris_queue) == 0
        app = create_celery(settings)
        assert AsyncResult(cancelled, app=app).state == "REVOKED"
        # Frozen with a task already handed to it: the cancel is stored, and the revoke broadcast reaches it too.
        os.kill(worker.proc.pid, signal.SIGSTOP)
        try:
            frozen = _queue(client)
            assert client.delete(f"/v1/tasks/{frozen}").status_code == 200
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        last = _queue(client)
        assert poll_until_done(client, f"/v1/tasks/{last}")["status"] == "SUCCESS"
        assert AsyncResult(frozen, app=app).state == "REVOKED"
        assert frozen in _revoked_on(app, worker.hostname)
        app.close()
        # A finished task answers 409 and keeps its result.
        finished = client.delete(f"/v1/tasks/{after}")
        assert finished.status_code == 409
        assert finished.get_json()["error"]["raised"] == "TaskNotCancellable"
        assert finished.get_json()["data"] == {"task_id": after, "status": "SUCCESS"}
        assert client.get(f"/v1/tasks/{after}").get_json()["data"]["status"] == "SUCCESS"
    finally:
        worker.stop()


def test_a_started_task_answers_409(stopped: Any) -> None:
    settings, client, _ = stopped
    task_id = _queue(client)
    app = create_celery(settings)
    assert revocation.start(app.backend, task_id, os.getpid(), "test")  # the script a worker runs as it starts
    answer = client.delete(f"/v1/tasks/{task_id}")
    assert answer.status_code == 409 and answer.get_json()["data"]["status"] == "STARTED"
    assert "started" in answer.get_json()["error"]["message"]
    app.close()


def test_a_cancel_racing_the_workers_start_loses_or_wins_whole(stopped: Any) -> None:
    settings, client, _ = stopped
    app = create_celery(settings)
    ids = [_queue(client) for _ in range(20)]

    def race(task_id: str) -> tuple[int, bool]:
        start = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            cancel = pool.submit(lambda: (start.wait(), client.delete(f"/v1/tasks/{task_id}").status_code)[1])
            begin = pool.submit(lambda: (start.wait(), revocation.start(app.backend, task_id, 1, "test"))[1])
            return cancel.result(), begin.result()

    outcomes = [race(task_id) for task_id in ids]
    # Exactly one side wins each race: a 200 cancel and a refused start, or a 409 and a started task.
    assert all(outcome in ((200, False), (409, True)) for outcome in outcomes), outcomes
    app.close()


def test_a_sync_request_that_timed_out_cannot_be_cancelled(stopped: Any) -> None:
    _, client, _ = stopped
    timed_out = client.post("/v1/classify", json=SEED_EXAMPLE)
    assert timed_out.status_code == 504
    answer = client.delete(timed_out.headers["Location"])
    assert answer.status_code == 409 and answer.get_json()["data"]["status"] is None
    assert "POST /v1/classify/async" in answer.get_json()["error"]["message"]


@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_task_is_a_404(stopped: Any, task_id: str) -> None:
    _, client, _ = stopped
    answer = client.delete(f"/v1/tasks/{task_id}")
    assert answer.status_code == 404 and answer.get_json()["error"]["raised"] == "NotFound"


def test_cancel_needs_an_api_key_when_keys_are_on(stopped: Any, lonely_env: dict[str, str]) -> None:
    settings, _, _ = stopped
    client = create_app(make_settings(lonely_env, iris_queue=settings.iris_queue, api_keys=API_KEY)).test_client()
    task_id = client.post("/v1/classify/async", json=SEED_EXAMPLE,
                          headers={"X-API-Key": API_KEY}).get_json()["data"]["task_id"]
    refused = client.delete(f"/v1/tasks/{task_id}")
    assert refused.status_code == 401 and refused.get_json()["error"]["raised"] == "Unauthorized"
    assert client.get(f"/v1/tasks/{task_id}", headers={"X-API-Key": API_KEY}).get_json()["data"]["status"] == "PENDING"
    assert client.delete(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
