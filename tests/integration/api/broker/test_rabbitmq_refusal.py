"""A publish RabbitMQ refuses is a full queue, not an outage: 503 QueueFull with Retry-After, on every enqueue path.

The operator's bound here is a policy on the API's queues (``max-length`` 2, ``overflow: reject-publish``), in a
vhost of the test's own (tests/integration/amqp.py), with no worker: under publisher confirms RabbitMQ answers a
publish past it with basic.nack. Each path must answer QueueFull: sync rows (their edge batch to ``iris.rows``),
batch requests and /invocations (their table to ``iris.rows``) and async tasks (to the quorum queue ``iris``).
The refusal is logged as one, never as "Redis is down", and leaves the circuit closed, so the next publish that
fits is served at once. Redis (DB 7 of the tests' Redis) holds the results and is emptied afterwards.
"""

import itertools
import logging
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from kombu import Connection
from werkzeug.test import TestResponse

from api import create_app
from api.errors import QueueFull
from api.extension import KEY
from tests.helpers import SEED_EXAMPLE, make_settings
from tests.integration import amqp

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(amqp.skip_reason() is not None, reason=amqp.skip_reason() or "")]

RESULTS_DB = 7
SYNC_TIMEOUT = 0.5  # a row no worker answers waits this long, then is re-sent to ``iris`` and answers 504
BOUND = '{"max-length": 2, "overflow": "reject-publish"}'
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def bounded_vhost() -> Iterator[str]:
    """Yield the URL of a vhost of this test's own whose ``iris*`` queues hold at most 2 messages each."""
    with amqp.private_vhost() as url:
        vhost = urlsplit(url).path.lstrip("/")
        subprocess.run(["rabbitmqctl", "-q", "set_policy", "-p", vhost, "iris-bounds", "^iris", BOUND,
                        "--apply-to", "queues"], check=True, capture_output=True, timeout=60)
        yield url


@pytest.fixture
def app(bounded_vhost: str, redis_base: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    # Celery reads these before the URLs it is given.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    results = f"{redis_base}/{RESULTS_DB}"
    app = create_app(make_settings({}, celery_broker_url=bounded_vhost, celery_result_backend=results,
                                   key_prefix="iris-test:", sync_timeout_seconds=SYNC_TIMEOUT,
                                   queue_max_length=100))
    # Were a refusal to trip the circuit, it would stay open for the rest of the test, and the last step fail.
    app.extensions[KEY].circuit.open_seconds = 60
    try:
        yield app
    finally:
        app.extensions[KEY].celery.close()
        redis.Redis.from_url(results).flushdb()


def assert_refused(resp: TestResponse, app: Flask, path: str) -> None:
    body = resp.get_json()
    assert resp.status_code == 503, (path, resp.status_code, body)
    assert resp.headers["Retry-After"] == "1", path
    assert body["message"] == "failed" and body["error"]["code"] == "503", (path, body)
    assert body["error"]["raised"] == "QueueFull" and body["error"]["message"] == QueueFull.refused, (path, body)
    assert not app.extensions[KEY].circuit.is_open(), path


def refused_at_once(client: FlaskClient, app: Flask, path: str, body: object) -> None:
    """POST ``body`` to ``path``: refused, and without waiting for a reply (the broker said no at the publish)."""
    started = time.monotonic()
    resp = client.post(path, json=body)
    assert time.monotonic() - started < SYNC_TIMEOUT, path
    assert_refused(resp, app, path)


def test_every_enqueue_path_answers_queue_full_when_rabbitmq_refuses_and_the_circuit_stays_closed(
        app: Flask, bounded_vhost: str, caplog: pytest.LogCaptureFixture) -> None:
    client = app.test_client()
    with caplog.at_level(logging.INFO):
        # Sync rows: each edge batch goes to iris.rows; with no worker it answers 504 and is re-sent to iris.
        for _ in range(2):
            resp = client.post("/v1/classify", json=SEED_EXAMPLE)
            assert resp.status_code == 504, resp.get_json()
        # iris.rows holds 2: the next edge batch, batch request and MLflow table are refused at the publish.
        refused_at_once(client, app, "/v1/classify", SEED_EXAMPLE)
        refused_at_once(client, app, "/v1/classify/batch", {"instances": [SEED_EXAMPLE] * 3})
        refused_at_once(client, app, "/invocations", {"inputs": [ROW, ROW]})
        refused_at_once(client, app, "/v1/classify", SEED_EXAMPLE)  # refused again: still no circuit
        # iris holds the two re-sent rows; async tasks go there until it refuses (a quorum queue checks its
        # bound before it enqueues, so it may take one more than the policy's length).
        answers = [client.post("/v1/classify/async", json=SEED_EXAMPLE) for _ in range(4)]
        statuses = [resp.status_code for resp in answers]
        assert 503 in statuses, statuses
        first = statuses.index(503)
        assert statuses[:first] in ([], [202]), statuses
        for resp in answers[first:]:
            assert_refused(resp, app, "/v1/classify/async")

        # Room again: the very next request of each kind is taken, with no circuit to wait out.
        with Connection(bounded_vhost, connect_timeout=3) as conn:
            for queue in ("iris", "iris.rows"):
                conn.default_channel.queue_purge(queue)
        accepted = client.post("/v1/classify/async", json=SEED_EXAMPLE)
        assert accepted.status_code == 202, accepted.get_json()
        resp = client.post("/v1/classify", json=SEED_EXAMPLE)  # its batch taken, no worker: 504 with a poll URL
        assert resp.status_code == 504, resp.get_json()

    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "Redis is down" in m or "Redis unreachable" in m], messages
    refusals = [record for record in caplog.records if "the broker refused" in record.getMessage()]
    assert refusals and all(record.exc_info is None for record in refusals), messages
    # At most one line a second, not one per request: the refusals of one second share a line.
    assert all(later.created - earlier.created >= 0.9 for earlier, later in itertools.pairwise(refusals)), messages
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], messages
