"""RabbitMQ as the broker (Redis stays the result backend): a worker and the API work unchanged over AMQP.

Needs a RabbitMQ on TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//); skipped when nothing answers.
Each run uses a queue of its own and deletes it, its exchange and any Celery exchanges it created.
"""

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

from api import create_app
from tests.helpers import SEED_EXAMPLE, WorkerProcess, make_settings

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Exchanges Celery declares for remote control; removed after the test if the test created them.
CELERY_EXCHANGES = ("celery.pidbox", "reply.celery.pidbox", "celeryev")


def _amqp_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1):
            return True
    except OSError:
        return False


def _existing_exchanges(conn: Connection, names: tuple[str, ...]) -> set[str]:
    """Names among ``names`` that exist on the broker (a passive declare fails on a missing exchange)."""
    found = set()
    for name in names:
        channel = conn.channel()
        with contextlib.suppress(Exception):  # 404 NOT_FOUND: missing, and the broker closes the channel
            channel.exchange_declare(name, "direct", passive=True)
            found.add(name)
        with contextlib.suppress(Exception):
            channel.close()
    return found


_ADDRESS = f"{urlsplit(AMQP_URL).hostname}:{urlsplit(AMQP_URL).port or 5672}"
# Checked at collection, so a machine without RabbitMQ skips before the session trains a model for nothing.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not _amqp_answers(AMQP_URL), reason=f"no RabbitMQ answers at {_ADDRESS}"),
]


@pytest.fixture
def amqp_queue() -> Iterator[str]:
    """A unique queue name on the RabbitMQ under test; the queue and what the test created go afterwards."""
    queue = f"iris-amqp-{uuid.uuid4().hex[:8]}"
    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
            before = _existing_exchanges(conn, CELERY_EXCHANGES)
    except OperationalError as exc:
        pytest.skip(f"RabbitMQ at {_ADDRESS} refuses the connection: {exc}")
    yield queue
    with Connection(AMQP_URL, connect_timeout=3) as conn:
        channel = conn.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
        for name in CELERY_EXCHANGES:
            if name not in before and name in _existing_exchanges(conn, (name,)):
                conn.default_channel.exchange_delete(name)


def test_worker_and_api_over_rabbitmq(amqp_queue: str, stack_env: dict[str, str]) -> None:
    env = {**stack_env, "CELERY_BROKER_URL": AMQP_URL}
    worker = WorkerProcess(env, queue=amqp_queue, name=f"amqp-{amqp_queue[-8:]}")
    app = None
    try:
        # The worker declares the queue on RabbitMQ before it answers readiness.
        worker.start()
        app = create_app(make_settings(stack_env, celery_broker_url=AMQP_URL, iris_queue=amqp_queue))
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
