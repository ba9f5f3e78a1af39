"""Time one edge-batch publish three ways: the fast path, Celery's documented ``send_task_message``, ``send_task``.

    .venv/bin/python -m load.bench_publish --redis-url redis://127.0.0.1:6379/9

Publishes an 8-row ``iris.classify_rows`` message to a throwaway queue (deleted after each round) in
alternating rounds, and prints the median µs per publish of each way, in wall-clock time and in this process's CPU.
"""

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from api.batching.task_messages import EdgeMessages
from shared import tasks
from shared.celery_app import create_celery
from shared.settings import Settings

QUEUE = "iris-bench-publish"


def main() -> None:
    """Run the rounds and print one line per way."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--publishes", type=int, default=3000)
    args = parser.parse_args()
    app = create_celery(Settings(celery_broker_url=args.redis_url, celery_result_backend=args.redis_url,
                                 iris_queue=QUEUE))
    rows = [[5.1, 3.5, 1.4, 0.2]] * 8
    ids = [str(uuid.uuid4()) for _ in rows]
    headers = {"request_ids": [None] * len(rows)}
    conn = app.connection_for_write()
    channel = conn.default_channel
    app.amqp.queues[QUEUE].bind(channel).declare()
    producer = app.amqp.Producer(channel, auto_declare=False)

    def message() -> Any:
        return app.amqp.as_task_v2(str(uuid.uuid4()), tasks.CLASSIFY_ROWS, args=[rows, ids, "reply"],
                                   argsrepr="(8 rows)", ignore_result=True)

    messages = EdgeMessages(app, tasks.CLASSIFY_ROWS, QUEUE)
    ways: dict[str, Callable[[], object]] = {
        "fast path (EdgeMessages.put)": lambda: messages.put(channel, [rows, ids, "reply"], "(8 rows)",
                                                              dict(headers)),
        "send_task_message + kept Producer": lambda: app.amqp.send_task_message(
            producer, tasks.CLASSIFY_ROWS, message(), queue=QUEUE, headers=dict(headers), retry=False),
        "send_task + kept Producer": lambda: app.send_task(
            tasks.CLASSIFY_ROWS, args=[rows, ids, "reply"], queue=QUEUE, producer=producer, retry=False,
            ignore_result=True, argsrepr="(8 rows)", headers=dict(headers)),
    }
    client = redis.Redis.from_url(args.redis_url)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    try:
        for _ in range(args.rounds):
            for name, publish in ways.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.publishes):
                    publish()
                timings[name].append(((time.perf_counter() - wall) / args.publishes * 1e6,
                                      (time.process_time() - cpu) / args.publishes * 1e6))
                client.delete(QUEUE)
    finally:
        client.delete(QUEUE)
        conn.release()
    for name, values in timings.items():
        print(f"{name:36s} {statistics.median(v[0] for v in values):7.1f} µs/publish, "
              f"{statistics.median(v[1] for v in values):6.1f} µs of CPU (CPU by round: "
              f"{', '.join(f'{v[1]:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
