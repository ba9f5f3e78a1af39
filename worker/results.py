"""Store per-row results under their own task ids, in Celery's result format, in one round trip."""

from collections.abc import Sequence
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend


def _meta(backend: Any, task_id: str, result: Any, state: str) -> dict[str, Any]:
    """Build the same meta Celery writes, so AsyncResult and GET /v1/tasks read it unchanged."""
    if state in states.EXCEPTION_STATES:
        result = backend.prepare_exception(result)
    return {"status": state, "result": result, "traceback": None, "children": [],
            "date_done": backend.app.now().isoformat(), "task_id": task_id}


def store_many(backend: Any, task_ids: Sequence[str], results: Sequence[Any], state: str) -> None:
    """Write each id's result in one pipelined round trip when the backend is Redis.

    Unlike Celery's own store, this does not PUBLISH per id: the waiting API process gets the whole
    batch on its reply channel, and anyone else reads these results by polling (GET /v1/tasks/<id>).
    """
    if not isinstance(backend, RedisBackend):
        for task_id, result in zip(task_ids, results, strict=True):
            backend.store_result(task_id, result, state)
        return
    with backend.client.pipeline(transaction=False) as pipe:
        for task_id, result in zip(task_ids, results, strict=True):
            key = backend.get_key_for_task(task_id)
            value = backend.encode(_meta(backend, task_id, result, state))
            pipe.set(key, value, ex=backend.expires or None)
        pipe.execute()


def publish_reply(backend: Any, channel: str, message: bytes | str) -> None:
    """Send one batch reply to the API process that is waiting on ``channel``."""
    if isinstance(backend, RedisBackend):
        backend.client.publish(channel, message)
