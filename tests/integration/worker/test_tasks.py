"""A worker with FAST_PATHS=0 answers edge batches through kombu's own transport and Celery's store_result."""

import uuid
from collections.abc import Iterator

import pytest
from celery.result import AsyncResult

from shared import tasks
from shared.celery_app import create_celery
from shared.schemas import FEATURES
from tests.helpers import SEED_EXAMPLE, WorkerProcess, make_settings, next_reply

pytestmark = pytest.mark.integration

SETOSA_ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def documented_worker(lonely_env: dict[str, str]) -> Iterator[WorkerProcess]:
    """A worker of this test's own, on a queue of its own, with every fast path off."""
    proc = WorkerProcess({**lonely_env, "FAST_PATHS": "0"}, queue=f"iris-documented-{uuid.uuid4().hex[:8]}")
    proc.start()
    yield proc
    proc.stop()


def test_a_worker_with_fast_paths_off_answers_rows_under_their_ids_and_on_the_reply_channel(
    documented_worker: WorkerProcess,
) -> None:
    app = create_celery(make_settings(documented_worker.env))
    pubsub = app.backend.client.pubsub()
    reply_to = f"iris-test:reply:{uuid.uuid4().hex}"
    pubsub.subscribe(reply_to)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    task_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    rows = [[SEED_EXAMPLE[f] for f in FEATURES], SETOSA_ROW]
    app.send_task(tasks.CLASSIFY_ROWS, args=[rows, task_ids, reply_to], queue=documented_worker.queue,
                  ignore_result=True)
    reply = next_reply(pubsub, 30)
    pubsub.close()
    assert reply is not None and reply["ids"] == task_ids
    assert [row["pred_label"] for row in reply["results"]] == ["Iris-virginica", "Iris-setosa"]
    stored = [AsyncResult(task_id, app=app) for task_id in task_ids]
    assert [result.result["pred_label"] for result in stored] == ["Iris-virginica", "Iris-setosa"]
    # Written by Celery's own JSON encoder (orjson, which the script path uses, writes no spaces)...
    assert all(app.backend.client.get(app.backend.get_key_for_task(i)).startswith(b'{"status": "SUCCESS"')
               for i in task_ids)
    # ...with the row TTL (ROW_RESULT_EXPIRES_SECONDS, 600 s), not result_expires' hour.
    assert all(0 < app.backend.client.ttl(app.backend.get_key_for_task(i)) <= 600 for i in task_ids)
    app.close()
