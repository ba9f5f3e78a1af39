"""No queue message can kill or wedge a worker: each malformed kind is dropped, counted, and the next one served.

A table too large for a worker is refused by size before it is decoded, with a FAILURE its caller can read.
"""

import base64
import copy
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from shared import tasks
from shared.celery_app import create_celery
from shared.errors import PayloadValidationError
from tests.helpers import SEED_EXAMPLE, RedisServer, WorkerProcess, free_port, make_settings, next_reply

pytestmark = pytest.mark.integration

QUEUE, ROWS = "iris", "iris.rows"
ROW = [SEED_EXAMPLE[k] for k in ("sepal_length", "sepal_width", "petal_length", "petal_width")]

Envelope = dict[str, Any]
Breaker = Callable[[Envelope], bytes]


def encoded(envelope: Envelope) -> bytes:
    return json.dumps(envelope).encode()


def with_body(body: bytes) -> Breaker:
    """Replace the body with ``body`` (base64, as kombu's Redis transport writes it)."""
    def breaker(envelope: Envelope) -> bytes:
        return encoded({**envelope, "body": base64.b64encode(body).decode()})
    return breaker


def with_args(change: Callable[[list[Any]], list[Any]]) -> Breaker:
    """Decode the body, change its args, encode it again."""
    def breaker(envelope: Envelope) -> bytes:
        args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
        body = json.dumps([change(args), kwargs, embed]).encode()  # NaN allowed: json writes it as a bare NaN
        return with_body(body)(envelope)
    return breaker


def with_headers(**changes: Any) -> Breaker:
    """Set (or, with ``...``, remove) headers."""
    def breaker(envelope: Envelope) -> bytes:
        headers = {**envelope["headers"], **changes}
        return encoded({**envelope, "headers": {k: v for k, v in headers.items() if v is not ...}})
    return breaker


def with_envelope(**changes: Any) -> Breaker:
    """Set (or, with ``...``, remove) the envelope's own fields."""
    def breaker(envelope: Envelope) -> bytes:
        changed = {**envelope, **changes}
        return encoded({k: v for k, v in changed.items() if v is not ...})
    return breaker


def without_delivery_tag(envelope: Envelope) -> bytes:
    properties = {k: v for k, v in envelope["properties"].items() if k != "delivery_tag"}
    return encoded({**envelope, "properties": properties})


# (name, reason counted, how to break a good message), pushed onto both queues.
BOTH_QUEUES: list[tuple[str, str, Breaker]] = [
    ("not-json", "not_json", lambda _: b"this is not JSON {"),
    ("json-array", "not_a_message", lambda _: b"[1, 2, 3]"),
    ("no-properties", "not_a_message", with_envelope(properties=...)),
    ("no-delivery-tag", "not_a_message", without_delivery_tag),
    ("body-a-number", "not_a_message", with_envelope(body=5)),
    ("bad-base64", "not_a_message", with_envelope(body="!!!not base64==")),
    ("headers-a-list", "bad_headers", with_envelope(headers=["task", "id"])),
    ("headers-null", "bad_headers", with_envelope(headers=None)),
    ("no-task-id", "bad_headers", with_headers(id=...)),
    ("id-a-number", "bad_headers", with_headers(id=5)),
    ("no-task-name", "bad_headers", with_headers(task=...)),
    ("timelimit-of-three", "bad_headers", with_headers(timelimit=[1, 2, 3])),
    ("eta-garbage", "bad_headers", with_headers(eta="not a date")),
    ("unknown-task", "unknown_task", with_headers(task="iris.no_such_task")),
    ("task-name-a-list", "unknown_task", with_headers(task=["iris.classify"])),
    ("task-name-an-object", "unknown_task", with_headers(task={"name": "iris.classify"})),
    ("pickle", "bad_content", with_envelope(**{"content-type": "application/x-python-serialize"})),
    ("compressed-garbage", "bad_content", lambda e: with_headers(compression="application/x-gzip")(
        {**e, "body": base64.b64encode(b"not gzip").decode()})),
    ("body-not-json", "bad_body", with_body(b"not JSON at all")),
    ("body-an-object", "bad_body", with_body(b'{"args": [], "kwargs": {}}')),
    ("body-a-2-list", "bad_body", with_body(b"[[], {}]")),
    ("args-not-a-list", "bad_body", with_body(b'[5, {}, {}]')),
    ("kwargs-a-list", "bad_body", with_body(b'[[], [], {}]')),
    ("huge", "too_large", with_body(b"[[" + b"1.5," * 2_000_000 + b"1], {}, {}]")),
]
# The API's internal tasks take their arguments on trust: only on the rows queue.
ROWS_ONLY: list[tuple[str, str, Breaker]] = [
    ("rows-of-strings", "bad_rows", with_args(lambda a: [[["a", "b", "c", "d"]], *a[1:]])),
    ("row-of-three", "bad_rows", with_args(lambda a: [[ROW[:3]], *a[1:]])),
    ("row-not-finite", "bad_rows", with_args(lambda a: [[[float("nan"), *ROW[1:]]], *a[1:]])),
    ("row-of-booleans", "bad_rows", with_args(lambda a: [[[True, True, True, True]], *a[1:]])),
    ("task-ids-not-strings", "bad_body", with_args(lambda a: [a[0], [1], *a[2:]])),
    ("more-ids-than-rows", "bad_body", with_args(lambda a: [a[0], [*a[1], "extra-id"], *a[2:]])),
    ("reply-to-a-number", "bad_body", with_args(lambda a: [*a[:2], 5])),
    ("keyword-arguments", "bad_body", lambda e: with_body(
        json.dumps([[], {"rows": [ROW], "task_ids": ["x"]}, {}]).encode())(e)),
]
# Read only by Celery's own strategy, which the public queue always takes (the rows queue only with FAST_PATHS=0).
IRIS_ONLY: list[tuple[str, str, Breaker]] = [
    ("stamped-headers-of-lists", "bad_message", with_headers(stamped_headers=[[1]])),
]
CASES = ([pytest.param(queue, reason, breaker, id=f"{queue}-{name}") for queue in (QUEUE, ROWS)
          for name, reason, breaker in BOTH_QUEUES]
         + [pytest.param(ROWS, reason, breaker, id=f"{ROWS}-{name}") for name, reason, breaker in ROWS_ONLY]
         + [pytest.param(QUEUE, reason, breaker, id=f"{QUEUE}-{name}") for name, reason, breaker in IRIS_ONLY])


@dataclass
class Stack:
    """A worker, an API on its broker, and a good message of each queue as the API sends it."""

    env: dict[str, str]
    worker: WorkerProcess
    api: FlaskClient
    broker: redis.Redis
    good: dict[str, Envelope]
    metrics_port: int
    celery: Celery
    last_tag: str = ""

    def rejected(self, reason: str) -> float:
        """Scrape the worker's iris_rejected_messages_total for ``reason``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "iris_rejected_messages_total" and sample.labels == {"reason": reason}:
                    return float(sample.value)
        return 0.0

    def fresh(self, queue: str) -> Envelope:
        """Return a copy of the queue's good message under new ids, so no two pushes share a task id."""
        envelope = copy.deepcopy(self.good[queue])
        task_id = str(uuid.uuid4())
        envelope["headers"].update(id=task_id, root_id=task_id)
        self.last_tag = str(uuid.uuid4())
        envelope["properties"].update(correlation_id=task_id, delivery_tag=self.last_tag)
        return envelope


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no other test's worker takes these messages."""
    server = RedisServer(tmp_path_factory.mktemp("malformed-redis"), aof=False).start()
    yield server
    server.stop()


def capture_good_messages(env: dict[str, str], broker: redis.Redis) -> dict[str, Envelope]:
    """Return what the API queues for a sync request (iris.classify_rows) and an async one (iris.classify), read
    off the queues before any worker consumes them."""
    client = create_app(make_settings(env, sync_timeout_seconds=0.5)).test_client()
    assert client.post("/v1/classify/async", json=SEED_EXAMPLE).status_code == 202
    assert client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 504  # no worker yet
    queued = {queue: [orjson.loads(m) for m in broker.lrange(queue, 0, -1)] for queue in (QUEUE, ROWS)}
    broker.delete(QUEUE, ROWS)
    return {QUEUE: next(m for m in queued[QUEUE] if m["headers"]["task"] == tasks.CLASSIFY),
            ROWS: next(m for m in queued[ROWS] if m["headers"]["task"] == tasks.CLASSIFY_ROWS)}


@pytest.fixture(scope="module", params=["1", "0"], ids=["fast-paths", "documented"])
def stack(request: pytest.FixtureRequest, stack_env: dict[str, str], redis_server: RedisServer) -> Iterator[Stack]:
    """A worker with FAST_PATHS on (the lean strategy, the bypass transports) or off (Celery's and kombu's own)."""
    port = free_port()
    env = {**stack_env, "CELERY_BROKER_URL": redis_server.url(0), "CELERY_RESULT_BACKEND": redis_server.url(1),
           "FAST_PATHS": request.param, "WORKER_METRICS_PORT": str(port)}
    for db in (0, 1):
        redis_server.client(db).flushdb()
    broker = redis_server.client(0)
    good = capture_good_messages(env, broker)
    worker = WorkerProcess(env, queue=QUEUE).start()
    api = create_app(make_settings(env)).test_client()
    deadline = time.monotonic() + 30
    while api.post("/v1/classify", json=SEED_EXAMPLE).status_code != 200:  # the first reply listener starts
        assert time.monotonic() < deadline, "the stack never answered"
    celery = create_celery(make_settings(env))
    yield Stack(env, worker, api, broker, good, port, celery)
    celery.close()
    worker.stop()
    for db in (0, 1):
        redis_server.client(db).flushdb()


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


@pytest.mark.parametrize(("queue", "reason", "breaker"), CASES)
def test_a_malformed_message_is_dropped_and_counted_and_the_next_request_is_answered_at_once(
        stack: Stack, queue: str, reason: str, breaker: Breaker) -> None:
    assert stack.worker.proc is not None
    pid = stack.worker.proc.pid
    before = stack.rejected(reason)
    stack.broker.lpush(queue, breaker(stack.fresh(queue)))
    wait_for(lambda: stack.rejected(reason) > before)
    assert stack.worker.proc.poll() is None and stack.worker.proc.pid == pid, stack.worker.stderr()
    started = time.monotonic()
    answer = stack.api.post("/v1/classify", json=SEED_EXAMPLE)
    assert answer.status_code == 200 and time.monotonic() - started < 1.0
    assert stack.rejected(reason) == before + 1  # logged and counted once
    # Acknowledged, or never recorded: nothing brings it back.
    assert stack.broker.llen(queue) == 0 and not stack.broker.hexists("unacked", stack.last_tag)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"[1, 2]", "not_a_message"),
    (b'{"body": "e30=", "headers": {}}', "not_a_message"),
    (b'{"body": "e30=", "headers": [], "properties": {"delivery_tag": "t", "delivery_info": '
     b'{"exchange": "celery.pidbox", "routing_key": ""}}}', "bad_headers"),
], ids=["array", "no-properties", "headers-a-list"])
def test_a_malformed_broadcast_on_the_remote_control_channel_is_dropped_and_control_still_answers(
        stack: Stack, payload: bytes, reason: str) -> None:
    assert stack.worker.proc is not None
    pid = stack.worker.proc.pid
    before = stack.rejected(reason)
    assert stack.broker.publish("/0.celery.pidbox", payload) == 1  # kombu's topic for the celery.pidbox exchange
    wait_for(lambda: stack.rejected(reason) > before)
    assert stack.worker.proc.poll() is None and stack.worker.proc.pid == pid
    assert stack.celery.control.broadcast(tasks.MODEL_INFO_COMMAND, reply=True, timeout=2,
                                          destination=[stack.worker.hostname])


def test_a_refused_public_task_ends_in_a_failure_its_caller_can_read(stack: Stack) -> None:
    envelope = stack.fresh(QUEUE)
    stack.broker.lpush(QUEUE, with_body(b"[[], {}]")(envelope))
    result = AsyncResult(envelope["headers"]["id"], app=stack.celery)
    wait_for(lambda: result.state == "FAILURE")
    assert isinstance(result.result, PayloadValidationError) and "bad_body" in str(result.result)


def test_a_batch_over_batch_max_rows_fails_without_a_prediction(stack: Stack) -> None:
    result = stack.celery.send_task(tasks.CLASSIFY_BATCH, args=[[SEED_EXAMPLE] * 1001], queue=QUEUE)
    with pytest.raises(PayloadValidationError, match="at most 1000 rows"):
        result.get(timeout=30)


def test_an_edge_batch_over_the_row_limit_is_answered_with_a_failure_on_its_reply_channel(stack: Stack) -> None:
    pubsub = stack.celery.backend.client.pubsub()
    reply_to = f"iris-test:reply:{uuid.uuid4().hex}"
    pubsub.subscribe(reply_to)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    task_ids = [str(uuid.uuid4()) for _ in range(1001)]
    stack.broker.lpush(ROWS, with_args(lambda _: [[ROW] * 1001, task_ids, reply_to])(stack.fresh(ROWS)))
    reply = next_reply(pubsub, 10)
    pubsub.close()
    assert reply is not None and reply["ids"] == task_ids
    assert reply["error"]["raised"] == "PayloadValidationError" and "at most 1000 rows" in reply["error"]["message"]


def vm_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_a_table_of_two_million_rows_is_refused_by_size_and_the_worker_does_not_grow(stack: Stack) -> None:
    assert stack.worker.proc is not None
    pid = stack.worker.proc.pid
    before = vm_rss_kib(pid)
    too_large = stack.rejected("too_large")
    result = stack.celery.send_task(tasks.CLASSIFY_BATCH, args=[[SEED_EXAMPLE] * 2_000_000], queue=QUEUE)
    with pytest.raises(PayloadValidationError, match="at most 1000 rows"):
        result.get(timeout=60)
    assert stack.rejected("too_large") == too_large + 1  # dropped by the transport, before decoding
    assert stack.worker.proc.poll() is None and stack.worker.proc.pid == pid
    # Redis sends the whole value at once: while it is read, the worker holds it twice (redis-py's parser buffer and
    # the bytes). The bytes go when the transport drops them; the buffer at the parser's next read, which BRPOP's
    # 1 s timeout brings at the latest.
    wait_for(lambda: vm_rss_kib(pid) - before < 50 * 1024, timeout=5)
    started = time.monotonic()
    assert stack.api.post("/v1/classify", json=SEED_EXAMPLE).status_code == 200
    assert time.monotonic() - started < 1.0
