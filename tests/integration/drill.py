"""Drills on a real worker and broker: queue a burst, catch a process mid-task, and read what Redis holds.

Tasks take microseconds, so a burst is queued before the worker starts, and the process is frozen (SIGSTOP) at an
instant it holds one of them, delivered and not yet acknowledged: a signal sent then lands mid-task.
"""

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from tests.helpers import SEED_EXAMPLE, RedisServer, WorkerProcess


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


def queued(server: RedisServer, ids: list[str]) -> set[str]:
    return {json.loads(raw)["headers"]["id"] for raw in server.client(0).lrange("iris", 0, -1)} & set(ids)


def assert_all_accounted_for(server: RedisServer, ids: list[str]) -> None:
    """Every task has succeeded, waits in the queue, or waits in the unacknowledged hash for redelivery."""
    assert succeeded(server, ids) | queued(server, ids) | set(held(server, ids)) == set(ids)


def freeze_mid_task(pids: list[int], ready: Callable[[], bool],
                    busy: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Once ``ready()``, SIGSTOP ``pids`` at instants until ``busy()`` is non-empty; return it, ``pids`` frozen.

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


def mid_burst(server: RedisServer, ids: list[str], held_by: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Return ``held_by()``, checking that tasks still wait in the queue: the burst is not over."""
    assert queued(server, ids), "the burst ended before the worker was caught mid-task"
    return held_by()


def start_and_freeze(server: RedisServer, env: dict[str, str],
                     ids: list[str]) -> tuple[WorkerProcess, dict[str, float]]:
    """Start a worker on the queued burst and freeze it holding a task once 30 succeeded; return both."""
    worker = WorkerProcess(env).start(wait=False)
    assert worker.proc is not None
    try:
        return worker, freeze_mid_task([worker.proc.pid], lambda: len(succeeded(server, ids)) >= 30,
                                       lambda: mid_burst(server, ids, lambda: held(server, ids)))
    except BaseException:
        worker.kill()
        raise


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
