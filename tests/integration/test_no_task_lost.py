"""No task is lost: a worker killed or stopped mid-burst, or a Redis restart, leaves every accepted task to succeed.

Each drill kills or stops a process at an instant it holds a task (tests/integration/drill.py), and checks that
Redis still accounts for every task and that every one ends in SUCCESS.
"""

import contextlib
import os
import signal
import time

from api import create_app
from shared.celery_app import create_celery
from shared.settings import Settings
from tests.helpers import RedisServer, WorkerProcess, make_settings
from tests.integration.drill import (
    assert_all_accounted_for,
    children,
    freeze_mid_task,
    held,
    metas,
    mid_burst,
    publish,
    queued,
    start_and_freeze,
    succeeded,
    wait_all_succeed,
)


def assert_redelivered_in_time(server: RedisServer, stranded: dict[str, float], settings: Settings,
                               sweeping_since: float) -> None:
    """Check a dead worker's tasks come back no sooner than the visibility timeout, and by one sweep after it.

    Only a running worker sweeps: the first sweep after the timeout comes at most one sweep period after the
    later of the task's due time and ``sweeping_since``, when the replacement worker answered.
    """
    timeout = settings.visibility_timeout_seconds
    options = create_celery(settings).conf.broker_transport_options
    sweep = options["unacked_restore_interval"] * options["unacked_restore_throttle"]
    while any(held(server, list(stranded)).get(task_id) == at for task_id, at in stranded.items()):
        assert time.time() < max(stranded.values()) + timeout + 60, "not redelivered"
        time.sleep(0.1)
    restored_at = time.time()
    print(f"\nredelivered {[round(restored_at - at, 1) for at in stranded.values()]}s after delivery, "
          f"visibility timeout {timeout}s, replacement ready after "
          f"{[round(sweeping_since - at, 1) for at in stranded.values()]}s")
    for delivered_at in stranded.values():
        assert restored_at - delivered_at >= timeout
        assert restored_at <= max(delivered_at + timeout, sweeping_since) + sweep + 1


def test_sigkilled_worker_loses_none_of_300_tasks_and_its_task_returns_after_the_visibility_timeout(
        private_env: dict[str, str], private_redis: RedisServer) -> None:
    # 20 s, not the default 120 s, keeps CI short: the sweep that restores the task is the same. The default's
    # own figures are in docs/reliability.md (121.4-123.6 s), and tests/unit/shared/test_celery_app.py bounds it.
    env = {**private_env, "VISIBILITY_TIMEOUT_SECONDS": "20"}
    settings = make_settings(env)
    client = create_app(settings).test_client()
    ids = publish(client, 300)
    worker, stranded = start_and_freeze(private_redis, env, ids)
    worker.kill()
    killed_at = time.monotonic()
    assert held(private_redis, ids) == stranded  # the dead worker's task waits in Redis's unacknowledged hash
    assert_all_accounted_for(private_redis, ids)

    replacement = WorkerProcess(env).start()
    try:
        assert_redelivered_in_time(private_redis, stranded, settings, time.time())
        wait_all_succeed(client, ids, timeout=60)
    finally:
        replacement.stop()
    print(f"all 300 succeeded {time.monotonic() - killed_at:.1f}s after the kill")


def test_sigkilled_prefork_child_mid_task_loses_nothing(private_env: dict[str, str],
                                                        private_redis: RedisServer) -> None:
    env = {**private_env, "WORKER_POOL": "prefork", "WORKER_CONCURRENCY": "2"}
    settings = make_settings(env)
    client = create_app(settings).test_client()
    ids = publish(client, 300)
    worker = WorkerProcess(env, extra=("--pool", "prefork")).start(wait=False)
    assert worker.proc is not None
    try:
        deadline = time.monotonic() + 120
        while len(children(worker.proc.pid)) < 2:
            assert time.monotonic() < deadline and worker.proc.poll() is None, "no pool children"
            time.sleep(0.01)
        child = min(children(worker.proc.pid))

        def running_in_child() -> dict[str, float]:
            """Tasks the child started and has not finished (task_track_started stores its pid)."""
            return {task_id: 0.0 for task_id, meta in metas(private_redis, ids).items()
                    if meta["status"] == "STARTED" and meta["result"]["pid"] == child}

        # The parent is frozen too, so that the other child cannot finish the burst between tries.
        interrupted = freeze_mid_task([worker.proc.pid, child], lambda: len(succeeded(private_redis, ids)) >= 30,
                                      lambda: mid_burst(private_redis, ids, running_in_child))
        os.kill(child, signal.SIGKILL)
        os.kill(worker.proc.pid, signal.SIGCONT)
        while child in children(worker.proc.pid):
            assert time.monotonic() < deadline, "the killed child was not reaped"
            time.sleep(0.01)
        assert len(succeeded(private_redis, ids)) < len(ids)

        # The pool requeues the lost child's task at once (task_reject_on_worker_lost), not after the timeout.
        wait_all_succeed(client, ids, timeout=settings.visibility_timeout_seconds / 2)
        assert set(interrupted) <= succeeded(private_redis, ids)
    finally:
        for pid in [worker.proc.pid, *children(worker.proc.pid)] if worker.proc.poll() is None else ():
            with contextlib.suppress(ProcessLookupError):  # one left frozen by a failed assertion blocks shutdown
                os.kill(pid, signal.SIGCONT)
        worker.stop()
    assert "WorkerLostError" in worker.stderr()


def test_sigterm_mid_burst_gives_unfinished_tasks_back_at_once(private_env: dict[str, str],
                                                               private_redis: RedisServer) -> None:
    settings = make_settings(private_env)
    client = create_app(settings).test_client()
    ids = publish(client, 300)
    worker, _ = start_and_freeze(private_redis, private_env, ids)
    assert worker.proc is not None
    try:
        os.kill(worker.proc.pid, signal.SIGTERM)
        os.kill(worker.proc.pid, signal.SIGCONT)
        assert worker.proc.wait(30) == 0
    finally:
        worker.kill()
    # Warm shutdown finishes the task in hand and pushes back what it reserved: nothing waits for a timeout.
    assert held(private_redis, ids) == {}
    assert queued(private_redis, ids)
    assert_all_accounted_for(private_redis, ids)

    replacement = WorkerProcess(private_env).start()
    try:
        wait_all_succeed(client, ids, timeout=settings.visibility_timeout_seconds / 2)
    finally:
        replacement.stop()


def test_tasks_queued_or_held_before_a_redis_restart_succeed_after_it(private_env: dict[str, str],
                                                                       private_redis: RedisServer) -> None:
    env = {**private_env, "VISIBILITY_TIMEOUT_SECONDS": "20"}
    settings = make_settings(env)
    client = create_app(settings).test_client()
    ids = publish(client, 300)
    worker, stranded = start_and_freeze(private_redis, env, ids)
    worker.kill()
    waiting = queued(private_redis, ids)

    private_redis.restart()  # SIGTERM, then start again on the same append-only file
    assert queued(private_redis, ids) == waiting and held(private_redis, ids) == stranded
    # The API's issued-id keys survived too: GET answers, not 404. The held task may have stored its result.
    for task_id in [*stranded, *sorted(waiting)[:5]]:
        resp = client.get(f"/v1/tasks/{task_id}")
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["data"]["status"] == "PENDING" or task_id in stranded

    replacement = WorkerProcess(env).start()
    try:
        assert_redelivered_in_time(private_redis, stranded, settings, time.time())
        wait_all_succeed(client, ids, timeout=60)
    finally:
        replacement.stop()
