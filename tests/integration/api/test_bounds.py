"""QUEUE_MAX_LENGTH bounds what the API queues, both queues together, and so Redis's memory: with no worker
taking anything, a flood of sync, batch and async requests fills the queues to the bound plus a computed slack,
every later request answers 503 with Retry-After, and used_memory grows by less than the bound allows.

The slack (api/broker/admission.py), for one API process whose requests run in T threads, S of them sync or batch:
- each sync row or batch request whose wait ends unanswered sends its rows once more on ``iris``: counted, not
  admitted, so those waiting when the bound is reached add up to S messages;
- a message admitted before a depth reading began but sent after the broker answered it is in neither the reading
  nor the process's count: at most one per thread, T.
So the queues hold at most QUEUE_MAX_LENGTH + S + T messages. Several API processes each add their own S + T,
and what the others admitted within one reading's life (max_age, 0.25 s).
"""

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from api import create_app
from api.broker.admission import Admission
from tests.helpers import RedisServer, make_settings

pytestmark = pytest.mark.integration

LIMIT = 50
SYNC_TIMEOUT = 1.0
BATCH_MAX_ROWS = 1000
SYNC_THREADS, BATCH_THREADS, ASYNC_THREADS = 8, 4, 4
# Each thread sends at most this many requests, one every PAUSE seconds or so, for at most FLOOD_SECONDS.
PER_THREAD = {"sync": 12, "batch": 12, "async": 120}
PAUSE = 0.01
FLOOD_SECONDS = 4.0
SLACK = (SYNC_THREADS + BATCH_THREADS) + (SYNC_THREADS + BATCH_THREADS + ASYNC_THREADS)
# The longest a measurement takes in JSON: 17 significant digits and an exponent (0 < x <= 100).
WORST = 1.2345678901234567e-05
SMALL = {"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}
LARGE = {"sepal_length": WORST, "sepal_width": WORST, "petal_length": WORST, "petal_width": WORST}
QUEUES = ("iris", "iris.rows")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, so used_memory and the key counts are this test's alone."""
    server = RedisServer(tmp_path / "redis", aof=False).start()
    yield server
    server.stop()


def app_for(env: dict[str, str], server: RedisServer, **settings: Any) -> tuple[Flask, str]:
    prefix = f"iris-bounds-{uuid.uuid4().hex[:8]}:"
    env = {**env, "CELERY_BROKER_URL": server.url(0), "CELERY_RESULT_BACKEND": server.url(1), "KEY_PREFIX": prefix}
    return create_app(make_settings(env, sync_timeout_seconds=SYNC_TIMEOUT, batch_max_rows=BATCH_MAX_ROWS,
                                    metrics=False, **settings)), prefix


def queued(broker: redis.Redis) -> int:
    with broker.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(queue)
        return sum(pipe.execute())


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def families(server: RedisServer, prefix: str) -> dict[str, int]:
    """Count the keys each family holds, in the broker's database and the result backend's."""
    names = {f"{prefix}task:": "issued ids", "celery-task-meta-": "celery-task-meta-*", "_kombu.binding.": "bindings"}
    counts: Counter[str] = Counter()
    for db in (0, 1):
        client = server.client(db)
        for key in client.scan_iter(count=1000):
            text = key.decode()
            family = next((name for start, name in names.items() if text.startswith(start)), text)
            counts[f"db{db} {family}"] += 1
        client.close()
    return dict(counts)


@dataclass
class Answer:
    family: str
    started: float
    status: int
    retry_after: str | None
    raised: str | None


def post(app: Flask, family: str, body: Any, answers: list[Answer]) -> None:
    """Send one request of ``family`` through the test client and record its answer."""
    path = {"sync": "/v1/classify", "async": "/v1/classify/async", "batch": "/v1/classify/batch"}[family]
    started = time.monotonic()
    resp = app.test_client().post(path, json=body)
    error = (resp.get_json() or {}).get("error") if resp.status_code >= 400 else None
    answers.append(Answer(family, started, resp.status_code, resp.headers.get("Retry-After"),
                          error["raised"] if error else None))


def test_a_flood_with_no_worker_fills_both_queues_to_the_bound_and_then_every_request_is_refused(
        stack_env: dict[str, str], server: RedisServer) -> None:
    app, prefix = app_for(stack_env, server, queue_max_length=LIMIT)
    admission: Admission = app.extensions["iris"].admission
    broker, backend = server.client(0), server.client(1)
    memory_before = used_memory(broker)
    answers: list[Answer] = []
    stop = threading.Event()
    depth_seen: list[tuple[float, int]] = []

    def watch() -> None:
        while not stop.is_set():
            depth_seen.append((time.monotonic(), queued(broker)))
            time.sleep(0.002)

    def flood(family: str, body: Any) -> Callable[[], None]:
        def run() -> None:
            deadline = time.monotonic() + FLOOD_SECONDS
            for _ in range(PER_THREAD[family]):
                if time.monotonic() > deadline:
                    break
                post(app, family, body, answers)
                time.sleep(PAUSE)
        return run

    bodies = {"sync": LARGE, "async": LARGE, "batch": {"instances": [LARGE] * BATCH_MAX_ROWS}}
    threads = [threading.Thread(target=flood(family, bodies[family]))
               for family, count in (("sync", SYNC_THREADS), ("batch", BATCH_THREADS), ("async", ASYNC_THREADS))
               for _ in range(count)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    watcher.join(10)
    # Every admitted sync or batch request waited out SYNC_TIMEOUT and sent its rows again before it answered.
    final = queued(broker)
    depths = {queue: broker.llen(queue) for queue in QUEUES}
    memory_grown = used_memory(broker) - memory_before
    largest = max(len(message) for queue in QUEUES for message in broker.lrange(queue, 0, -1))
    keys = families(server, prefix)

    by = Counter((a.family, a.status) for a in answers)
    print(f"\n{len(answers)} requests: {dict(sorted(by.items()))}; queues {depths} = {final} "
          f"(bound {LIMIT}, slack {SLACK}); max seen while flooding {max(d for _, d in depth_seen)}")
    print(f"used_memory grew {memory_grown} bytes; largest message {largest} bytes; keys {keys}")

    assert max(d for _, d in depth_seen) <= final <= LIMIT + SLACK
    assert final >= LIMIT  # it did fill
    full_at = next(when for when, depth in depth_seen if depth >= LIMIT)
    # From one reading's life after the queues filled, nothing more is admitted, in any family.
    later = [a for a in answers if a.started > full_at + admission.max_age + 0.05]
    assert {a.family for a in later} == {"sync", "batch", "async"}, by
    refused = [(a.family, a.status, a.retry_after, a.raised) for a in later]
    assert all(r[1:] == (503, "1", "QueueFull") for r in refused), Counter(refused)
    # What was admitted answered as it should with no worker: 202 for async, 504 after the wait for the others.
    assert {a.status for a in answers} <= {202, 503, 504}
    admitted = by[("async", 202)] + by[("sync", 504)] + by[("batch", 504)]
    # Each async task is one message on iris, and each timed-out sync row or batch request one resend there.
    assert depths["iris"] == admitted
    # Every admitted id is recorded once, for its poll URL; no worker stored or took anything.
    assert keys.get("db1 issued ids") == admitted
    assert not any("celery-task-meta" in key or "unacked" in key for key in keys)
    # Memory: every message at most the largest, a quarter more for Redis's allocations, each id's key, and
    # 256 kB for the rest (the bindings, the issued ids' expiry table).
    budget = math.ceil((LIMIT + SLACK) * (largest * 1.25 + 200) + 256 * 1024)
    print(f"memory budget {budget} bytes = ({LIMIT} + {SLACK}) x ({largest} x 1.25 + 200) + 256 kB")
    assert memory_grown < budget
    broker.close()
    backend.close()


def test_bytes_each_family_of_queued_message_takes(stack_env: dict[str, str], server: RedisServer) -> None:
    """Measure, with no worker, what each kind of request leaves in Redis: its messages and its issued id."""
    # BATCH_MAX_SIZE=1: a sync row in an edge batch of its own, the most a row can cost.
    app, prefix = app_for(stack_env, server, queue_max_length=100_000, batch_max_size=1)
    broker, backend = server.client(0), server.client(1)
    figures: dict[str, tuple[int, int, float]] = {}

    def list_memory() -> int:
        return sum(int(broker.memory_usage(queue, samples=0) or 0) for queue in QUEUES)

    def measure(name: str, family: str, body: Any, count: int) -> None:
        before = {queue: broker.llen(queue) for queue in QUEUES}
        memory = list_memory()
        answers: list[Answer] = []
        threads = [threading.Thread(target=post, args=(app, family, body, answers)) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        statuses = Counter(a.status for a in answers)
        assert set(statuses) == ({202} if family == "async" else {504}), statuses
        added = {queue: broker.llen(queue) - before[queue] for queue in QUEUES}
        # async: the task on iris; sync and batch: the edge batch or table on iris.rows, then the resend on iris.
        assert added == ({"iris": count, "iris.rows": 0} if family == "async" else {"iris": count, "iris.rows": count})
        sizes = {queue: len(broker.lindex(queue, 0) or b"") if added[queue] else 0 for queue in QUEUES}
        figures[name] = (sizes["iris.rows"], sizes["iris"], (list_memory() - memory) / count)

    measure("async task", "async", LARGE, 200)
    measure("sync row", "sync", LARGE, 50)
    measure("batch request, 1 row", "batch", {"instances": [LARGE]}, 50)
    measure(f"batch request, {BATCH_MAX_ROWS} rows", "batch", {"instances": [LARGE] * BATCH_MAX_ROWS}, 10)
    issued = [int(backend.memory_usage(key) or 0) for key in backend.scan_iter(match=f"{prefix}task:*")]
    assert len(issued) == 200 + 50 + 50 + 10  # one per request: each was admitted
    print("\nper request, no worker (rows of 22-character numbers, the longest a measurement takes in JSON):")
    print(f"{'request':<26}{'iris.rows message':>18}{'iris message':>14}{'list memory':>13}")
    for name, (rows_message, iris_message, grown) in figures.items():
        print(f"{name:<26}{rows_message:>18}{iris_message:>14}{grown:>13.0f}")
    print(f"issued id key (MEMORY USAGE): {max(issued)} bytes")
    # The worst case the docs quote: a full batch request's resend is the largest message, well under 256 kB.
    largest = max(max(rows, iris) for rows, iris, _ in figures.values())
    assert largest == figures[f"batch request, {BATCH_MAX_ROWS} rows"][1] < 256 * 1024
    assert 0 < max(issued) < 256
    broker.close()
    backend.close()


def test_queue_max_mb_refuses_large_tables_long_before_the_message_count_would(
        stack_env: dict[str, str], server: RedisServer) -> None:
    """QUEUE_MAX_MB bounds the queues' memory however many rows each message holds."""
    max_mb, threads_n, per_thread = 2.0, 4, 8
    app, _ = app_for(stack_env, server, queue_max_length=100_000, queue_max_mb=max_mb)
    broker = server.client(0)
    memory_before = used_memory(broker)
    answers: list[Answer] = []
    body = {"instances": [LARGE] * BATCH_MAX_ROWS}

    def flood() -> None:
        for _ in range(per_thread):
            post(app, "batch", body, answers)

    threads = [threading.Thread(target=flood) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    queues_bytes = sum(int(broker.memory_usage(queue, samples=0) or 0) for queue in QUEUES)
    largest = max(len(message) for queue in QUEUES for message in broker.lrange(queue, 0, -1))
    memory_grown = used_memory(broker) - memory_before
    statuses = Counter((a.status, a.raised) for a in answers)
    print(f"\n{len(answers)} batch requests of {BATCH_MAX_ROWS} rows: {dict(statuses)}; queues hold {queues_bytes} "
          f"bytes in {queued(broker)} messages (bound {max_mb} MB); used_memory grew {memory_grown} bytes")
    assert statuses[(503, "QueueFull")] > 0, statuses
    assert queued(broker) < 100  # the message count never came close to refusing
    # Slack: each thread's table and its resend may pass within one reading's life, and one more of each while
    # the reading that crosses the bound is made.
    slack = 2 * threads_n * 2 * largest
    assert max_mb * 1e6 <= queues_bytes <= max_mb * 1e6 + slack
    assert memory_grown < (max_mb * 1e6 + slack) * 1.25 + 256 * 1024
    broker.close()
