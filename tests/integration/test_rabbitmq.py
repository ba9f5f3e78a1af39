"""RabbitMQ as the broker (Redis stays the result backend): a worker and the API work unchanged over AMQP.

Needs a RabbitMQ on TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//) and rabbitmqctl; each test runs in
a vhost of its own that is deleted afterwards (tests/integration/amqp.py). Skipped, with the reason, elsewhere.
"""

import json
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Connection, Queue

from api import create_app
from tests.helpers import SEED_EXAMPLE, UpScript, WorkerProcess, free_port, make_settings
from tests.integration import amqp
from worker.watchdog import WATCHDOG_QUEUE_EXPIRES_SECONDS

# Checked at collection, so a machine without RabbitMQ skips before the session trains a model for nothing.
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(amqp.skip_reason() is not None, reason=amqp.skip_reason() or "")]


@pytest.fixture
def amqp_url() -> Iterator[str]:
    with amqp.private_vhost() as url:
        yield url


def redeclare_fails(url: str, queue: Queue) -> bool:
    """Tell whether RabbitMQ refuses ``queue`` as declared: an existing queue of that name has other arguments."""
    with Connection(url, connect_timeout=3) as conn:
        try:
            queue(conn.default_channel).declare()
        except PreconditionFailed:
            return True
    return False


def test_worker_and_api_over_rabbitmq(amqp_url: str, stack_env: dict[str, str]) -> None:
    env = {**stack_env, "CELERY_BROKER_URL": amqp_url}
    worker = WorkerProcess(env)
    app = None
    try:
        # The worker declares the queue on RabbitMQ before it answers readiness.
        worker.start()
        app = create_app(make_settings(stack_env, celery_broker_url=amqp_url))
        client = app.test_client()

        # /readyz checks the queue depth with a passive queue_declare over AMQP, and the worker by broadcast.
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.get_json()
        assert worker.hostname in ready.get_json()["data"]["workers"]

        resp = client.post("/v1/classify", json=SEED_EXAMPLE)
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["message"] == "success" and body["error"] is None
        assert body["data"]["pred_label"] == "Iris-virginica"

        batch = client.post("/v1/classify/batch", json={"instances": [SEED_EXAMPLE] * 3})
        assert batch.status_code == 200, batch.get_json()
        assert [row["pred_label"] for row in batch.get_json()["data"]] == ["Iris-virginica"] * 3

        submitted = client.post("/v1/classify/async", json=SEED_EXAMPLE)
        assert submitted.status_code == 202, submitted.get_json()
        status_url = submitted.get_json()["data"]["status_url"]
        deadline = time.monotonic() + 20
        while True:
            data = client.get(status_url).get_json()["data"]
            if data["status"] == "SUCCESS" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert data["status"] == "SUCCESS", data
        assert data["result"]["pred_label"] == "Iris-virginica"
    finally:
        worker.stop()
        if app is not None:
            app.extensions["iris"].celery.close()  # close the AMQP connections now, not at exit


def test_the_task_queue_is_a_quorum_queue_published_with_confirms_and_watchdog_queues_expire(
        amqp_url: str, stack_env: dict[str, str]) -> None:
    env = {**stack_env, "CELERY_BROKER_URL": amqp_url}
    worker = WorkerProcess(env).start()
    try:
        app = create_app(make_settings(stack_env, celery_broker_url=amqp_url))
        celery = app.extensions["iris"].celery
        try:
            assert celery.conf.broker_transport_options["confirm_publish"] is True
            assert app.test_client().post("/v1/classify", json=SEED_EXAMPLE).status_code == 200
        finally:
            celery.close()
        # RabbitMQ refuses to redeclare a queue with other arguments: the worker declared these as claimed.
        assert redeclare_fails(amqp_url, Queue("iris"))  # a classic queue of that name
        assert not redeclare_fails(amqp_url, Queue("iris", queue_arguments={"x-queue-type": "quorum"}))
        watchdog = f"iris.watchdog.{worker.hostname}"
        assert redeclare_fails(amqp_url, Queue(watchdog, routing_key=watchdog))
        assert not redeclare_fails(amqp_url, Queue(watchdog, routing_key=watchdog,
                                                   expires=WATCHDOG_QUEUE_EXPIRES_SECONDS))
    finally:
        worker.stop()


def test_make_up_with_rabbitmq_as_the_broker_serves_and_starts_no_redis_on_the_amqp_port(
        amqp_url: str, stack_env: dict[str, str], up: Callable[[dict[str, str]], UpScript]) -> None:
    env = {**stack_env, "CELERY_BROKER_URL": amqp_url, "PORT": str(free_port()), "WORKERS": "1"}
    stack = up(env)
    stack.wait_for(lambda: "is ready" in stack.output(), "the ready banner", 120)
    assert "as the broker" in stack.output() and "redis-server will run" not in stack.output()
    request = urllib.request.Request(f"http://127.0.0.1:{stack.port}/v1/classify", method="POST",
                                     data=json.dumps(SEED_EXAMPLE).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["data"]["pred_label"] == "Iris-virginica"
    assert stack.terminate() == 143
