"""Scale-out: workers started independently, as on two hosts, share one queue and both take tasks."""

import uuid
from collections.abc import Iterator

import pytest
import redis

from shared import tasks
from shared.celery_app import create_celery
from tests.helpers import SEED_EXAMPLE, WorkerProcess, make_settings

pytestmark = pytest.mark.integration

TASKS = 40


@pytest.fixture
def scale_queue(stack_env: dict[str, str]) -> Iterator[str]:
    """A queue of this test's own, so no other test's worker takes its tasks; removed afterwards."""
    queue = f"iris-scale-{uuid.uuid4().hex[:8]}"
    yield queue
    client = redis.Redis.from_url(stack_env["CELERY_BROKER_URL"])
    client.delete(queue, f"_kombu.binding.{queue}")
    client.close()


def test_two_independent_workers_share_one_queue(stack_env: dict[str, str], scale_queue: str) -> None:
    tag = uuid.uuid4().hex[:6]
    # Two separate `celery -A worker worker` processes with their own node names, as on two machines.
    workers = [WorkerProcess(stack_env, queue=scale_queue, name=f"host-{host}-{tag}") for host in ("a", "b")]
    app = create_celery(make_settings(stack_env, iris_queue=scale_queue))
    try:
        for proc in workers:
            proc.start(wait=False)  # start both before waiting: their model loads overlap
        for proc in workers:
            proc.wait_ready()

        results = [app.send_task(tasks.CLASSIFY, args=[SEED_EXAMPLE], queue=scale_queue) for _ in range(TASKS)]
        labels = [result.get(timeout=30)["pred_label"] for result in results]
        assert labels == ["Iris-virginica"] * TASKS

        # The result meta does not name the worker; each worker's own counters do.
        stats = app.control.inspect(destination=[w.hostname for w in workers], timeout=2).stats() or {}
        counts = {w.hostname: stats.get(w.hostname, {}).get("total", {}).get(tasks.CLASSIFY, 0) for w in workers}
        print(f"tasks per worker: {counts}")
        assert sum(counts.values()) == TASKS, counts
        assert all(count > 0 for count in counts.values()), f"one worker took every task: {counts}"
    finally:
        for proc in workers:
            proc.stop()
        app.close()
