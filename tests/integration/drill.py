"""Drills on a real worker and broker: queue a burst, catch a process mid-task, and read what the broker holds.

Tasks take microseconds, so a burst is queued before the worker starts, and the process is frozen (SIGSTOP) at an
instant it holds one of them, delivered and not yet acknowledged: a signal sent then lands mid-task. The broker is
Redis or RabbitMQ (:class:`Broker`); results are in Redis either way.
"""

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from flask.testing import FlaskClient
from kombu import Connection

from tests.helpers import SEED_EXAMPLE, RedisServer, WorkerProcess


class Broker(Protocol):
    """The broker under drill, as the drills see it: what waits in the task queue and what a worker holds."""

    name: str
    env: dict[str, str]  # the stack's environment with this broker's CELERY_BROKER_URL

    def waiting(self, ids: list[str]) -> int:
        """Count the tasks of ``ids`` waiting in the queue."""

    def holding(self, ids: list[str], done: int) -> int:
        """Count the tasks of ``ids`` delivered to a worker and not acknowledged, ``done`` of them having succeeded."""


class RedisBroker:
    """Redis, read exactly: the queue's list and kombu's unacknowledged hash."""

    name = "redis"

    def __init__(self, server: RedisServer, env: dict[str, str]) -> None:
        self.server = server
        self.env = env

    def waiting(self, ids: list[str]) -> int:
        return len(queued(self.server, ids))

    def holding(self, ids: list[str], done: int) -> int:
        return len(held(self.server, ids))


class AmqpBroker:
    """RabbitMQ in a vhost of the test's own, where every message in the task queue is the drill's."""

    name = "rabbitmq"

    def __init__(self, url: str, env: dict[str, str], queue: str = "iris") -> None:
        self.env = {**env, "CELERY_BROKER_URL": url}
        self.queue = queue
        self._conn = Connection(url, connect_timeout=3)

    def waiting(self, ids: list[str]) -> int:
        """Read the queue's ready messages with a passive declare (0 before anything declared it)."""
        try:
            return int(self._conn.default_channel.queue_declare(self.queue, passive=True).message_count)
        except self._conn.channel_errors:  # 404: not declared yet; the broker closed that channel
            self._conn.close()
            return 0

    def holding(self, ids: list[str], done: int) -> int:
        """AMQP tells no unacknowledged count: what is neither done nor waiting is held (or done, not yet acked)."""
        return len(ids) - done - self.waiting(ids)

    def close(self) -> None:
        self._conn.close()


def publish(client: FlaskClient, count: int) -> list[str]:
    """Queue ``count`` classifications as the API's clients do; return their task ids."""
    ids = []
    for _ in range(count):
        resp = client.post("/v1/classify/async", json=SEED_EXAMPLE)
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["data"]["task_id"])
    return ids


def metas(server: RedisServer, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Read the stored result of each of ``ids`` that has one, straight from the result backend."""
    raw = server.client(1).mget([f"celery-task-meta-{task_id}" for task_id in ids])
    return {task_id: json.loads(meta) for task_id, meta in zip(ids, raw, strict=True) if meta}


def succeeded(server: RedisServer, ids: list[str]) -> set[str]:
    return {task_id for task_id, meta in metas(server, ids).items() if meta["status"] == "SUCCESS"}


def held(server: RedisServer, ids: list[str]) -> dict[str, float]:
    """Return {task id: delivery time} of ``ids`` that a worker took and has not acknowledged."""
    with server.client(0).pipeline() as pipe:  # MULTI: both views of one instant
        pipe.zrange("unacked_index", 0, -1, withscores=True)
        pipe.hgetall("unacked")
        index, messages = pipe.execute()
    delivered = dict(index)
    taken = {json.loads(raw)[0]["headers"]["id"]: delivered[tag] for tag, raw in messages.items()}
    return {task_id: at for task_id, at in taken.items() if task_id in ids}


def queued(server: RedisServer, ids: list[str], queues: tuple[str, ...] = ("iris",)) -> set[str]:
    """Return the tasks of ``ids`` waiting in any of ``queues``."""
    client = server.client(0)
    return {json.loads(raw)["headers"]["id"] for queue in queues for raw in client.lrange(queue, 0, -1)} & set(ids)


def assert_all_accounted_for(server: RedisServer, ids: list[str]) -> None:
    """Every task has succeeded, waits in the queue, or waits in the unacknowledged hash for redelivery."""
    assert succeeded(server, ids) | queued(server, ids) | set(held(server, ids)) == set(ids)


def freeze_mid_task(pids: list[int], ready: Callable[[], bool], busy: Callable[[], Any]) -> Any:
    """Once ``ready()``, SIGSTOP ``pids`` at instants until ``busy()`` is truthy; return it, ``pids`` frozen.

    Between tries they run for a few milliseconds only, so even a burst of microsecond tasks lasts many tries.
    """
    deadline = time.monotonic() + 120
    while not ready():
        assert time.monotonic() < deadline, "the worker did not get going"
        time.sleep(0.001)
    while time.monotonic() < deadline:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.02)  # Redis applies whatever the processes had already sent, such as an ack
        if holding := busy():
            return holding
        for pid in reversed(pids):
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError("the worker was never caught mid-task")


def mid_burst(broker: Broker, ids: list[str], held_by: Callable[[], Any]) -> Any:
    """Return ``held_by()``, checking that tasks still wait in the queue: the burst is not over."""
    assert broker.waiting(ids), "the burst ended before the worker was caught mid-task"
    return held_by()


def start_and_freeze(broker: Broker, results: RedisServer, ids: list[str], env: dict[str, str] | None = None,
                     ) -> WorkerProcess:
    """Start a worker on the queued burst and return it frozen holding tasks, once 30 succeeded."""
    worker = WorkerProcess(env or broker.env).start(wait=False)
    assert worker.proc is not None
    try:
        freeze_mid_task([worker.proc.pid], lambda: len(succeeded(results, ids)) >= 30,
                        lambda: mid_burst(broker, ids, lambda: broker.holding(ids, len(succeeded(results, ids)))))
    except BaseException:
        worker.kill()
        raise
    return worker


def wait_all_succeed(client: FlaskClient, ids: list[str], timeout: float) -> None:
    """Poll GET /v1/tasks/<id> until every task is SUCCESS; fail on any other final state or at ``timeout``."""
    pending = set(ids)
    deadline = time.monotonic() + timeout
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} of {len(ids)} tasks not done in {timeout:.0f}s"
        for task_id in list(pending):
            resp = client.get(f"/v1/tasks/{task_id}")
            assert resp.status_code == 200, resp.get_json()
            status = resp.get_json()["data"]["status"]
            assert status in ("PENDING", "STARTED", "SUCCESS"), resp.get_json()
            if status == "SUCCESS":
                pending.discard(task_id)
        time.sleep(0.2)


def children(pid: int) -> set[int]:
    """Return the pids of ``pid``'s child processes (Linux /proc)."""
    found: set[int] = set()
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(child) for child in (thread / "children").read_text().split())
        except FileNotFoundError:
            continue  # the thread ended between the listing and the read
    return found
