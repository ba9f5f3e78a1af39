"""Measure a real worker's CPU per message: what Celery, kombu and the task cost for each edge batch.

    .venv/bin/python -m load.bench_worker --redis-url redis://127.0.0.1:6379/10 --messages 4000 --rows 1

It starts one ``celery -A worker worker`` (solo pool, as ``make up`` runs it) on a queue and databases of its own,
queues ``--messages`` ``iris.classify_rows`` messages of ``--rows`` rows each the way the API publishes them, and
reads the worker process's user + system CPU time while it drains them (``burst``: the queue is full, the most a
worker can do), then while it answers them one at a time (``ping-pong``: light load, where each request is a
message of its own). Each mode runs ``--rounds`` times, alternating; the line per mode gives the medians: CPU µs
per message, per row, and messages per second. The MLflow store must hold a champion (``make train``).
``--task classify`` sends async ``iris.classify`` tasks to the task queue instead (acknowledged, one row each, the
result stored): the messages behind the KEDA target in docs/deployment.md.
Extra worker settings go in as environment variables, e.g. ``WORKER_LEAN=0`` to measure Celery's full path.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import psutil
import redis

from shared import tasks
from shared.celery_app import create_celery
from shared.settings import Settings

FLOWER = [7.7, 2.6, 6.9, 2.3]
FIELDS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class Bench:
    """One worker on a private queue, and a publisher that sends it edge batches like an API process."""

    def __init__(self, redis_url: str, task: str = tasks.CLASSIFY_ROWS) -> None:
        self.task = task
        self.sent: list[str] = []
        base = redis_url.rstrip("/").rsplit("/", 1)[0]
        db = int(redis_url.rstrip("/").rsplit("/", 1)[1])
        self.queue = f"iris-bench-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "CELERY_BROKER_URL": f"{base}/{db}", "CELERY_RESULT_BACKEND": f"{base}/{db + 1}",
                    "IRIS_QUEUE": self.queue, "WORKER_METRICS_PORT": os.environ.get("WORKER_METRICS_PORT", "0"),
                    "LOGLEVEL": "WARNING"}
        self.settings = Settings(celery_broker_url=f"{base}/{db}", celery_result_backend=f"{base}/{db + 1}",
                                 iris_queue=self.queue)
        self.app = create_celery(self.settings)
        self.results = redis.Redis.from_url(f"{base}/{db + 1}")
        self.channel = f"iris-bench-reply-{uuid.uuid4().hex}"
        self.pubsub = self.results.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.channel)
        self.worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> psutil.Process:
        name = f"{self.queue}@%h"
        self.worker = subprocess.Popen(
            # BENCH_PY="-m cProfile -o worker.prof" profiles the worker.
            [sys.executable, *os.environ.get("BENCH_PY", "").split(), "-m", "celery", "-A", "worker", "worker",
             "-Q", self.queue, "-n", name, "--pool", "solo",
             "--without-gossip", "--without-mingle", "-l", "warning"], env=self.env)
        hostname = name.replace("%h", os.uname().nodename)
        deadline = time.monotonic() + 90
        while not self.app.control.broadcast(tasks.MODEL_INFO_COMMAND, reply=True, timeout=0.5,
                                             destination=[hostname]):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                sys.exit("the worker did not start (is there a champion? make train)")
        return psutil.Process(self.worker.pid)

    def publish(self, count: int, rows: int) -> None:
        """Queue ``count`` classify_rows messages as the API's EdgePublisher builds them."""
        if self.task == tasks.CLASSIFY:
            self.sent = [self.app.send_task(tasks.CLASSIFY, args=[dict(zip(FIELDS, FLOWER, strict=True))],
                                            queue=self.queue).id for _ in range(count)]
            return
        with self.app.connection_for_write() as conn:
            producer = self.app.amqp.Producer(conn.default_channel, auto_declare=False)
            for _ in range(count):
                ids = [str(uuid.uuid4()) for _ in range(rows)]
                message = self.app.amqp.as_task_v2(str(uuid.uuid4()), tasks.CLASSIFY_ROWS,
                                                   args=[[FLOWER] * rows, ids, self.channel],
                                                   argsrepr=f"({rows} rows)", ignore_result=True)
                self.app.amqp.send_task_message(producer, tasks.CLASSIFY_ROWS, message, queue=self.settings.rows_queue,
                                                headers={"request_ids": [None] * rows}, retry=False)

    def replies(self, count: int, timeout: float = 120) -> None:
        """Wait for ``count`` replies on the bench's channel (for classify tasks: their stored results)."""
        deadline = time.monotonic() + timeout
        if self.task == tasks.CLASSIFY:
            while self.results.exists(*(f"celery-task-meta-{task_id}" for task_id in self.sent)) < len(self.sent):
                if time.monotonic() > deadline:
                    sys.exit(f"not all of {len(self.sent)} tasks stored a result")
                time.sleep(0.01 if len(self.sent) == 1 else 0.05)
            return
        got = 0
        while got < count:
            if self.pubsub.get_message(timeout=1.0) is not None:
                got += 1
            elif time.monotonic() > deadline:
                sys.exit(f"only {got} of {count} replies came")

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait(30)
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(self.queue)
        self.pubsub.close()


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def burst(bench: Bench, proc: psutil.Process, messages: int, rows: int) -> dict[str, float]:
    """Queue every message first (worker paused), then time the drain."""
    proc.suspend()
    try:
        bench.publish(messages, rows)
    finally:
        before, wall = cpu(proc), time.perf_counter()
        proc.resume()
    bench.replies(messages)
    return {"cpu_s": cpu(proc) - before, "wall_s": time.perf_counter() - wall}


def ping_pong(bench: Bench, proc: psutil.Process, messages: int, rows: int) -> dict[str, float]:
    """Send one message at a time and wait for its reply, as one connection at light load does."""
    before, wall = cpu(proc), time.perf_counter()
    for _ in range(messages):
        bench.publish(1, rows)
        bench.replies(1)
    return {"cpu_s": cpu(proc) - before, "wall_s": time.perf_counter() - wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10", help="broker DB; results use DB + 1")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--task", choices=("rows", "classify"), default="rows",
                        help="edge batches on the rows queue (default), or async iris.classify tasks")
    args = parser.parse_args()
    bench = Bench(args.redis_url, tasks.CLASSIFY if args.task == "classify" else tasks.CLASSIFY_ROWS)
    try:
        proc = bench.start_worker()
        burst(bench, proc, 200, args.rows)  # warm up: connections, scripts, caches
        samples: dict[str, list[dict[str, float]]] = {"burst": [], "ping-pong": []}
        for round_ in range(args.rounds):
            order = [("burst", burst), ("ping-pong", ping_pong)]
            for name, run in order if round_ % 2 == 0 else order[::-1]:
                count = args.messages if name == "burst" else max(1, args.messages // 3)
                got = run(bench, proc, count, args.rows)
                samples[name].append({"us_per_msg": got["cpu_s"] * 1e6 / count, "msg_per_s": count / got["wall_s"],
                                      "wall_us": got["wall_s"] * 1e6 / count})
        for name, runs in samples.items():
            med: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"task={args.task} mode={name} rows={args.rows} worker_cpu_us_per_msg={med['us_per_msg']:.0f} "
                  f"worker_cpu_us_per_row={med['us_per_msg'] / args.rows:.1f} msg_per_s={med['msg_per_s']:.0f} "
                  f"wall_us_per_msg={med['wall_us']:.0f} runs={[round(r['us_per_msg']) for r in runs]}")
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
