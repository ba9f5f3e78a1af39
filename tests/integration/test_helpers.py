"""The worker helper leaves nothing behind, not even a worker that never became ready."""

import signal
import uuid

import pytest

from tests.helpers import WorkerProcess

pytestmark = pytest.mark.integration


def test_a_worker_not_ready_in_time_is_killed_rather_than_left_serving(private_env: dict[str, str]) -> None:
    worker = WorkerProcess(private_env, queue=f"late-{uuid.uuid4().hex[:8]}")
    # Importing Celery and MLflow alone takes longer than this.
    with pytest.raises(AssertionError, match=r"not ready in 0\.2s"):
        worker.start(ready_timeout=0.2)
    assert worker.proc is not None and worker.proc.returncode == -signal.SIGKILL
    assert not worker.alive()
