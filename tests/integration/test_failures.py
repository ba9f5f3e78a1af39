"""Failures we can foresee: a stopped or dead worker, a full queue, a model that cannot load."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from flask.testing import FlaskClient

from api import create_app
from api.extension import KEY
from tests.helpers import ROOT, SEED_EXAMPLE, WorkerProcess, make_settings, poll_until_done


def assert_a_new_worker_answers(env: dict[str, str], queue: str, client: FlaskClient, status_url: str) -> None:
    """Start a fresh worker on ``queue`` and check that the task queued at ``status_url`` then succeeds."""
    worker = WorkerProcess(env, queue=queue).start()
    try:
        data = poll_until_done(client, status_url)
        assert data["status"] == "SUCCESS" and data["result"]["pred_label"] == "Iris-virginica"
    finally:
        worker.stop()


def test_stopped_worker_gives_504_with_a_poll_url_that_later_succeeds(lonely_env: dict[str, str]) -> None:
    worker = WorkerProcess(lonely_env, queue="iris-stop").start()
    client = create_app(make_settings(lonely_env, iris_queue="iris-stop", sync_timeout_seconds=1.5)).test_client()
    try:
        assert client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 200
        worker.stop()
        resp = client.post("/v1/classify", json=SEED_EXAMPLE)
        assert resp.status_code == 504
        body = resp.get_json()
        assert body["error"]["code"] == "504" and body["error"]["raised"] == "Timeout"
        status_url = body["data"]["status_url"]
        assert resp.headers["Location"] == status_url == f"/v1/tasks/{body['data']['task_id']}"
        assert client.get(status_url).get_json()["data"]["status"] == "PENDING"

        assert_a_new_worker_answers(lonely_env, "iris-stop", client, status_url)
        # The row was marked when its wait ended: its result is kept for the poll URL, not held for seconds.
        results = redis.Redis.from_url(lonely_env["CELERY_RESULT_BACKEND"])
        settings = make_settings(lonely_env)
        assert results.ttl(f"celery-task-meta-{body['data']['task_id']}") > settings.row_result_hold_seconds
    finally:
        worker.stop()


def wait_for_a_blocked_brpop(broker: redis.Redis, seconds: float = 5.0) -> None:
    """Wait until a client of ``broker``'s database is blocked in BRPOP (here, the one worker's consumer)."""
    db = broker.connection_pool.connection_kwargs.get("db", 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(c.get("db") == str(db) and c.get("cmd") == "brpop" and "b" in c.get("flags", "")
               for c in broker.client_list()):
            return
        time.sleep(0.01)
    raise AssertionError(f"no consumer blocked in BRPOP on db {db} within {seconds} s")


def test_a_sync_row_whose_batch_died_with_its_worker_is_answered_at_its_poll_url(lonely_env: dict[str, str]) -> None:
    """Edge batches are consumed without acknowledgements: the API sends a timed-out row again on its own."""
    worker = WorkerProcess(lonely_env, queue="iris-lost").start()
    settings = make_settings(lonely_env, iris_queue="iris-lost", sync_timeout_seconds=1.5)
    client = create_app(settings).test_client()
    broker = redis.Redis.from_url(lonely_env["CELERY_BROKER_URL"])
    try:
        assert client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 200
        assert worker.proc is not None
        for _attempt in range(3):
            # The answer can reach the API before the worker asks for more: freeze it only once its BRPOP waits.
            wait_for_a_blocked_brpop(broker)
            worker.proc.send_signal(signal.SIGSTOP)  # its BRPOP stays outstanding: Redis hands it the next batch
            resp = client.post("/v1/classify", json=SEED_EXAMPLE)
            assert resp.status_code == 504
            if broker.llen(settings.rows_queue) == 0:
                break  # the batch sits in the frozen worker's socket
            # The BRPOP's 1 s timeout ran out as the worker froze, so the batch waits in the list: let the
            # worker answer it at its poll URL and freeze it again.
            worker.proc.send_signal(signal.SIGCONT)
            assert poll_until_done(client, resp.get_json()["data"]["status_url"])["status"] == "SUCCESS"
        else:
            raise AssertionError("in 3 tries the batch never sat in the frozen worker's socket")
        worker.kill()  # and dies with it: Redis kept no copy of an unacknowledged edge batch
        assert_a_new_worker_answers(lonely_env, "iris-lost", client, resp.get_json()["data"]["status_url"])
    finally:
        worker.kill()
        broker.delete(settings.rows_queue, "iris-lost")


def test_dead_worker_makes_readyz_503_and_queued_work_survives(private_env: dict[str, str]) -> None:
    # A Redis of its own: on a shared database, any other test's worker still alive would answer the readiness check.
    lonely_env = private_env
    worker = WorkerProcess(lonely_env, queue="iris-dead").start()
    app = create_app(make_settings(lonely_env, iris_queue="iris-dead"))
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 200
        worker.kill()
        app.extensions[KEY].readiness.workers.max_age = 0  # ask the workers again now, not after the 2 s cache
        resp = client.get("/readyz")
        assert resp.status_code == 503 and resp.get_json()["error"]["raised"] == "NoWorkers"

        accepted = client.post("/v1/classify/async", json=SEED_EXAMPLE)
        assert accepted.status_code == 202
        status_url = accepted.headers["Location"]
        assert client.get(status_url).get_json()["data"]["status"] == "PENDING"

        assert_a_new_worker_answers(lonely_env, "iris-dead", client, status_url)
    finally:
        worker.stop()


def test_full_queue_answers_503_and_loses_nothing_accepted(lonely_env: dict[str, str]) -> None:
    app = create_app(make_settings(lonely_env, iris_queue="iris-full", queue_max_length=2))
    app.extensions[KEY].admission.max_age = 0  # read the depth on every request, not every 0.25 s
    client = app.test_client()
    accepted = [client.post("/v1/classify/async", json=SEED_EXAMPLE) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    resp = client.post("/v1/classify/async", json=SEED_EXAMPLE)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.get_json()["error"]["raised"] == "QueueFull"

    worker = WorkerProcess(lonely_env, queue="iris-full").start()
    try:
        for r in accepted:
            assert poll_until_done(client, r.headers["Location"])["status"] == "SUCCESS"
    finally:
        worker.stop()


def test_worker_exits_non_zero_with_one_line_when_the_model_cannot_load(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**stack_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/empty.db", "IRIS_QUEUE": "iris-nomodel"}
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "iris-nomodel", "--pool", "solo",
         "--without-gossip", "--without-mingle", "-l", "warning"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    reasons = [line for line in proc.stderr.splitlines() if line.startswith("iris worker:")]
    assert len(reasons) == 1, proc.stderr
    assert "cannot load models:/iris-classifier@champion" in reasons[0]
    assert "Traceback" not in proc.stderr


def test_an_async_task_whose_brpop_reply_was_lost_is_restored_from_the_ledger(lonely_env: dict[str, str]) -> None:
    """A task Redis popped for a worker that never read it comes back, where kombu alone would lose it."""
    env = {**lonely_env, "VISIBILITY_TIMEOUT_SECONDS": "10"}
    settings = make_settings(env, iris_queue="iris-ledger")
    client = create_app(settings).test_client()
    broker = redis.Redis.from_url(env["CELERY_BROKER_URL"])
    worker = WorkerProcess(env, queue="iris-ledger")
    try:
        accepted = client.post("/v1/classify/async", json=SEED_EXAMPLE)
        assert accepted.status_code == 202
        # Redis writes the task into the BRPOP reply of a worker whose cable was just pulled: it is gone from the
        # list, and kombu never recorded it as unacknowledged.
        assert broker.rpop("iris-ledger") is not None and broker.llen("iris-ledger") == 0
        worker.start()
        started = time.monotonic()
        assert poll_until_done(client, accepted.headers["Location"], timeout=45)["status"] == "SUCCESS"
        assert time.monotonic() - started >= 10  # not before the visibility timeout: it might still arrive
        assert broker.zcard("_iris.ledger:iris-ledger") == 0
    finally:
        worker.kill()
        broker.delete("iris-ledger", "_iris.ledger:iris-ledger", "_iris.ledger:iris-ledger:messages",
                      "_iris.ledger:iris-ledger:suspects")
