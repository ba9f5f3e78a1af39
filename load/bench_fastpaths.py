"""Measure what each fast path saves over the documented API it bypasses, against a live Redis.

    .venv/bin/python -m load.bench_fastpaths --redis-url redis://127.0.0.1:6379/11

Prints one line per path: µs per operation (wall clock, then this process's CPU) for the fast path and its
FAST_PATHS=0 fallback, each the median of --rounds rounds that alternate the two. The paths:
``store_many`` of a 16-row batch (worker/fastpaths/store_result.py against ``store_result`` per id), and
kombu's ``basic_publish`` and a publish-get-ack round of one small message (shared/transport/client_per_pool.py
against kombu's own ``redis`` transport). It writes only keys and queues named ``iris-bench...``, and deletes
them; still, give it a database no service uses.
"""

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import states
from kombu import Connection

from shared.celery_app import create_celery
from shared.settings import Settings
from shared.transport.client_per_pool import Transport as BypassTransport
from worker.fastpaths.store_result import store_many

BATCH = 16
ROW = {"pred_label": "Iris-virginica", "model_name": "iris-classifier", "model_version": "3", "model_run_id": "r" * 32,
       "probabilities": {"Iris-setosa": 0.0001, "Iris-versicolor": 0.0412, "Iris-virginica": 0.9587}}

# One timed operation: given its round's number of calls, run them and return (wall, cpu) seconds in total.
Timed = Callable[[int], tuple[float, float]]


def timed(op: Callable[[], None], setup: Callable[[], None] = lambda: None,
          teardown: Callable[[], None] = lambda: None) -> Timed:
    """Wrap ``op`` so a round calls it n times, timing only the calls."""

    def run(n: int) -> tuple[float, float]:
        setup()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            op()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        teardown()
        return wall, cpu

    return run


def compare(fast: Timed, fallback: Timed, rounds: int, n: int) -> dict[str, tuple[float, float]]:
    """Run ``rounds`` alternating rounds of n calls each; return median (wall, cpu) µs per call by path."""
    fast(n // 10 or 1), fallback(n // 10 or 1)  # warm up: connections, scripts, caches
    samples: dict[str, list[tuple[float, float]]] = {"fast": [], "fallback": []}
    for i in range(rounds):
        # Alternate which goes first, so neither always runs on a warmer or quieter machine.
        order = [("fast", fast), ("fallback", fallback)] if i % 2 == 0 else [("fallback", fallback), ("fast", fast)]
        for name, run in order:
            wall, cpu = run(n)
            samples[name].append((wall / n * 1e6, cpu / n * 1e6))
    return {name: (statistics.median(s[0] for s in got), statistics.median(s[1] for s in got))
            for name, got in samples.items()}


def store_batch(url: str, fast: bool) -> Timed:
    """Time storing one batch of 16 rows, with its reply, as classify_rows does."""
    backend = create_celery(Settings(celery_broker_url=url, celery_result_backend=url)).backend
    written: list[str] = []

    def op() -> None:
        ids = [f"iris-bench-{uuid.uuid4()}" for _ in range(BATCH)]
        written.extend(ids)
        store_many(backend, ids, [ROW] * BATCH, states.SUCCESS, ("iris-bench:reply", b'{"ids": []}'), 600,
                   fast=fast)

    def teardown() -> None:
        backend.client.delete(*[backend.get_key_for_task(task_id) for task_id in written])
        written.clear()

    return timed(op, teardown=teardown)


def kombu_channel(url: str, transport: Any) -> Any:
    """Open a channel on ``url`` through ``transport`` (a class, or None for kombu's own ``redis``)."""
    connection = Connection(url, transport=transport)
    channel = connection.channel()
    channel.bench_connection = connection  # a collected Connection would close the channel's pools
    return channel


def message(channel: Any) -> Any:
    """Build a small message; a new one each time, as basic_publish encodes its body in place."""
    return channel.prepare_message('{"rows": [[7.7, 2.6, 6.9, 2.3]]}', content_type="application/json")


def publish(url: str, transport: Any) -> Timed:
    """Time ``basic_publish`` of one small message to a queue of the benchmark's own."""
    channel, queue = kombu_channel(url, transport), f"iris-bench-{uuid.uuid4()}"
    return timed(lambda: channel.basic_publish(message(channel), exchange="", routing_key=queue),
                 teardown=lambda: channel.queue_purge(queue))


def round_trip(url: str, transport: Any) -> Timed:
    """Time a publish, a get with kombu's ack emulation, and the ack: a worker's client use per message."""
    channel, queue = kombu_channel(url, transport), f"iris-bench-{uuid.uuid4()}"

    def op() -> None:
        channel.basic_publish(message(channel), exchange="", routing_key=queue)
        got = channel.basic_get(queue, no_ack=False)
        channel.basic_ack(got.delivery_tag)

    return timed(op, teardown=lambda: channel.queue_purge(queue))


def line(label: str, got: dict[str, tuple[float, float]]) -> str:
    """Format one path's medians as a line."""
    (fast_wall, fast_cpu), (slow_wall, slow_cpu) = got["fast"], got["fallback"]
    return (f"{label}: fast {fast_wall:,.0f} µs, fallback {slow_wall:,.0f} µs per operation "
            f"(saves {slow_wall - fast_wall:,.0f} µs); CPU {fast_cpu:,.0f} vs {slow_cpu:,.0f} µs")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and print one line per fast path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", required=True, help="redis://host:port/db of a database no service uses")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per path (median reported)")
    parser.add_argument("--ops", type=int, default=300, help="operations per round")
    args = parser.parse_args(argv)
    url = args.redis_url
    for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(var, None)  # Celery reads these over the app's own URLs: --redis-url must win
    print(f"median of {args.rounds} alternating rounds of {args.ops} operations, against {url}")
    print(line(f"store_many, {BATCH}-row batch + reply (fastpaths.store_result vs store_result)",
               compare(store_batch(url, True), store_batch(url, False), args.rounds, args.ops)))
    print(line("kombu basic_publish (transport.client_per_pool vs kombu's redis transport)",
               compare(publish(url, BypassTransport), publish(url, None), args.rounds, args.ops)))
    print(line("kombu publish + get + ack (transport.client_per_pool vs kombu's redis transport)",
               compare(round_trip(url, BypassTransport), round_trip(url, None), args.rounds, args.ops)))


if __name__ == "__main__":
    main()
