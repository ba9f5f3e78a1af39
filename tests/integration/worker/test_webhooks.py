"""Signed webhooks end to end: the real API, real workers and a real HTTP receiver on 127.0.0.1."""

import hashlib
import hmac
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from shared import webhooks
from tests.helpers import SEED_EXAMPLE, WorkerProcess, free_port, make_settings
from worker.webhooks import _FINISH as FINISH
from worker.webhooks import Deliverer

SECRET = "test-webhook-secret"
QUEUE = "iris-webhooks"  # this module's worker alone consumes it
DOOMED_QUEUE = "iris-webhooks-doomed"  # the worker the kill test SIGKILLs alone consumes it
HOOKS = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,localhost", "WEBHOOK_ALLOW_HTTP": "true",
         # Short retries and attempts so the tests take seconds: a lease of 3 x 1 + 1 s.
         "WEBHOOK_BACKOFF_SECONDS": "0.3", "WEBHOOK_TIMEOUT_SECONDS": "1", "WEBHOOK_MAX_ATTEMPTS": "3",
         "WEBHOOK_MAX_PENDING": "50"}
BLOCK = 0  # a planned answer: hold the request until the test releases it


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each path's planned statuses in turn (200 once they run out) and keeps every request it got."""

    port: int = 0
    plans: dict[str, list[int]] = field(default_factory=dict)
    got: list[Delivery] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.got if d.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 20) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(got := self.at(path)) < count:
            assert time.monotonic() < deadline, f"{len(got)} of {count} deliveries to {path} within {timeout} s"
            time.sleep(0.02)
        return got


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.got.append(Delivery(self.path, dict(self.headers.items()), body))
                plan = state.plans.get(self.path, [])
                status = plan.pop(0) if plan else 200
            if status == BLOCK:
                state.release.wait(30)
                status = 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hook_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {**stack_env, **HOOKS, "WORKER_METRICS_PORT": str(free_port())}


@pytest.fixture(scope="module")
def workers(hook_env: dict[str, str]) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """This module's worker, and one on a queue of its own for the test that kills it: started side by side."""
    procs = (WorkerProcess(hook_env, queue=QUEUE, name="webhooks"),
             WorkerProcess({**hook_env, "WORKER_METRICS_PORT": str(free_port())}, queue=DOOMED_QUEUE,
                           name="webhooks-doomed"))
    for proc in procs:
        proc.start(wait=False)
    try:
        for proc in procs:
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def hook_worker(workers: tuple[WorkerProcess, WorkerProcess]) -> WorkerProcess:
    return workers[0]


def api(env: dict[str, str], queue: str = QUEUE, **overrides: Any) -> FlaskClient:
    hooks = {"webhook_secret": SECRET, "webhook_allowed_hosts": HOOKS["WEBHOOK_ALLOWED_HOSTS"],
             "webhook_allow_http": True, **overrides}
    return create_app(make_settings({**env, "IRIS_QUEUE": queue}, **hooks)).test_client()


def submit(client: FlaskClient, url: str) -> str:
    resp = client.post("/v1/classify/async", json=SEED_EXAMPLE, headers={"Callback-URL": url})
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["data"]["task_id"])


def backend(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["CELERY_RESULT_BACKEND"])


def record(env: dict[str, str], task_id: str) -> dict[str, str]:
    key = webhooks.record_prefix(env["KEY_PREFIX"]) + task_id
    return {k.decode(): v.decode() for k, v in backend(env).hgetall(key).items() if k != b"body"}


def wait_for_state(env: dict[str, str], task_id: str, state: str, timeout: float = 10) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (found := record(env, task_id)).get("state") != state:
        assert time.monotonic() < deadline, found
        time.sleep(0.02)
    return found


def check_signed_answer(client: FlaskClient, delivery: Delivery, task_id: str, attempt: int) -> None:
    """The delivery is what GET /v1/tasks/<id> answers, byte for byte, signed with the secret."""
    polled = client.get(f"/v1/tasks/{task_id}")
    assert polled.status_code == 200 and polled.get_json()["data"]["status"] == "SUCCESS"
    assert delivery.body == polled.get_data()
    expected = hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Iris-Signature"] == f"sha256={expected}"
    assert delivery.headers["X-Iris-Task-Id"] == task_id
    assert delivery.headers["X-Iris-Delivery-Attempt"] == str(attempt)
    assert abs(int(delivery.headers["X-Iris-Delivery-Timestamp"]) - time.time()) < 30
    assert delivery.headers["Content-Type"] == "application/json"


def test_a_delivery_answered_500_is_retried_and_the_second_posts_the_signed_task_answer(
        hook_env: dict[str, str], hook_worker: WorkerProcess, receiver: Receiver) -> None:
    receiver.plans["/first-fails"] = [500]
    client = api(hook_env)
    task_id = submit(client, receiver.url("/first-fails"))
    first, second = receiver.wait_for("/first-fails", 2)
    assert first.body == second.body and first.headers["X-Iris-Delivery-Attempt"] == "1"
    check_signed_answer(client, second, task_id, attempt=2)
    done = wait_for_state(hook_env, task_id, "delivered")
    assert done["attempts"] == "2" and done["last_error"] == ""
    assert len(receiver.at("/first-fails")) == 2  # delivered: nothing is due any more
    key = webhooks.record_prefix(hook_env["KEY_PREFIX"]) + task_id
    assert 0 < backend(hook_env).ttl(key) <= make_settings(hook_env).webhook_record_ttl_seconds
    assert backend(hook_env).zscore(webhooks.due_key(hook_env["KEY_PREFIX"]), task_id) is None


def test_a_delivery_refused_every_time_is_recorded_as_failed_after_its_last_attempt(
        hook_env: dict[str, str], workers: tuple[WorkerProcess, WorkerProcess], receiver: Receiver) -> None:
    failed_before = counted(workers, "failed")
    receiver.plans["/always-fails"] = [500, 503, 502]
    task_id = submit(api(hook_env), receiver.url("/always-fails"))
    failed = wait_for_state(hook_env, task_id, "failed")
    assert failed["attempts"] == "3" and failed["last_error"] == "answered 502"
    assert [d.headers["X-Iris-Delivery-Attempt"] for d in receiver.at("/always-fails")] == ["1", "2", "3"]
    assert backend(hook_env).zscore(webhooks.due_key(hook_env["KEY_PREFIX"]), task_id) is None
    assert counted(workers, "failed") == failed_before + 1  # either worker may have sent the last attempt


def test_a_delivery_whose_worker_was_killed_mid_attempt_is_sent_by_another(
        hook_env: dict[str, str], workers: tuple[WorkerProcess, WorkerProcess], receiver: Receiver) -> None:
    # The task runs on the doomed worker (its queue's only consumer), which records the delivery and sends it at
    # once; the receiver holds that attempt while the worker is SIGKILLed. The module's other worker sends it
    # again once the dead one's lease ends.
    doomed = workers[1]
    try:
        receiver.plans["/killed"] = [BLOCK]
        client = api(hook_env, queue=DOOMED_QUEUE)
        task_id = submit(client, receiver.url("/killed"))
        receiver.wait_for("/killed", 1)
        doomed.kill()
    finally:
        doomed.kill()
        receiver.release.set()
    second = receiver.wait_for("/killed", 2, timeout=20)[1]
    check_signed_answer(client, second, task_id, attempt=2)
    assert wait_for_state(hook_env, task_id, "delivered")["attempts"] == "2"


def test_a_full_set_of_pending_deliveries_refuses_callbacks_at_submit_and_drops_them_in_the_worker(
        hook_env: dict[str, str], workers: tuple[WorkerProcess, WorkerProcess], receiver: Receiver) -> None:
    due = webhooks.due_key(hook_env["KEY_PREFIX"])
    fillers = {f"filler-{n}": time.time() + 3600 for n in range(int(HOOKS["WEBHOOK_MAX_PENDING"]))}
    backend(hook_env).zadd(due, fillers)  # due in an hour: no deliverer claims them during the test
    try:
        refused = api(hook_env, webhook_max_pending=50).post(
            "/v1/classify/async", json=SEED_EXAMPLE, headers={"Callback-URL": receiver.url("/full")})
        assert refused.status_code == 503 and refused.get_json()["error"]["raised"] == "CallbacksFull"
        # An API that counts more room (another process raced past the bound): the worker refuses the record.
        task_id = submit(api(hook_env, webhook_max_pending=1000), receiver.url("/full"))
        assert api(hook_env).get(f"/v1/tasks/{task_id}").status_code == 200
        deadline = time.monotonic() + 10
        while counted(workers[:1], "dropped") < 1:  # the worker that ran the task
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert record(hook_env, task_id) == {} and backend(hook_env).zcard(due) == len(fillers)
    finally:
        backend(hook_env).zrem(due, *fillers)
    assert receiver.at("/full") == []


def test_a_disallowed_host_or_a_metadata_address_is_refused_at_submit_with_nothing_queued(
        hook_env: dict[str, str], receiver: Receiver) -> None:
    queue = f"iris-webhooks-none-{uuid.uuid4().hex[:6]}"
    client = api(hook_env, queue=queue)
    for url in ("https://evil.example/hook", "http://169.254.169.254/latest/meta-data/"):
        resp = client.post("/v1/classify/async", json=SEED_EXAMPLE, headers={"Callback-URL": url})
        assert resp.status_code == 400 and resp.get_json()["error"]["message"].startswith("Callback-URL refused")
    assert redis.Redis.from_url(hook_env["CELERY_BROKER_URL"]).llen(queue) == 0
    # The same request without the header is queued: the refusal was the callback's.
    assert client.post("/v1/classify/async", json=SEED_EXAMPLE).status_code == 202
    assert redis.Redis.from_url(hook_env["CELERY_BROKER_URL"]).llen(queue) == 1


def counted(procs: tuple[WorkerProcess, ...], outcome: str) -> float:
    """Sum iris_webhook_deliveries_total{outcome} over the live workers' metrics."""
    total = 0.0
    for proc in procs:
        if proc.proc is None or proc.proc.poll() is not None:
            continue
        url = f"http://127.0.0.1:{proc.env['WORKER_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            for family in text_string_to_metric_families(resp.read().decode()):
                total += sum(sample.value for sample in family.samples if
                             sample.name == "iris_webhook_deliveries_total" and sample.labels == {"outcome": outcome})
    return total


def test_a_delivery_whose_last_attempt_went_unanswered_is_failed_and_a_late_deliverer_changes_nothing(
        hook_env: dict[str, str]) -> None:
    # In this process, under a key prefix of its own (no worker looks there), against the real Redis.
    settings = make_settings({**hook_env, "KEY_PREFIX": f"iris-test-hooks-{uuid.uuid4().hex[:6]}:"},
                             webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1", webhook_max_attempts=2)
    client = backend(hook_env)
    outcomes: list[str] = []
    deliverer = Deliverer(settings, lambda: client, outcomes.append)
    due, key = webhooks.due_key(settings.key_prefix), webhooks.record_prefix(settings.key_prefix) + "t1"
    client.hset(key, mapping={"url": "http://127.0.0.1:1/", "body": "{}", "attempts": 2, "state": "pending"})
    client.zadd(due, {"t1": 0})  # its lease long over: the deliverer of attempt 2 died
    try:
        assert deliverer.deliver_one() is True
        assert outcomes == ["failed"] and client.zscore(due, "t1") is None
        assert client.hget(key, "state") == b"failed"
        assert deliverer.deliver_one() is False  # nothing else is due
        # Attempt 2 was claimed after attempt 1's lease ran out: attempt 1's deliverer, back late, changes nothing.
        late = webhooks.record_prefix(settings.key_prefix) + "t2"
        client.hset(late, mapping={"url": "http://127.0.0.1:1/", "body": "{}", "attempts": 2, "state": "pending"})
        client.zadd(due, {"t2": time.time() + 60})
        finish = client.register_script(FINISH)
        assert finish(keys=[due, late], args=["t2", 1, "delivered", 0, ""]) == 0
        assert client.hget(late, "state") == b"pending" and client.zscore(due, "t2") is not None
        assert finish(keys=[due, late], args=["t2", 2, "delivered", 0, ""]) == 1
        assert client.hget(late, "state") == b"delivered" and client.zscore(due, "t2") is None
    finally:
        client.delete(key, due, webhooks.record_prefix(settings.key_prefix) + "t2")
