"""Store per-row results under their own task ids, in Celery's result format, in one round trip."""

from collections.abc import Sequence
from typing import Any

import orjson
from celery import states
from celery.backends.redis import RedisBackend


def _meta(backend: Any, task_id: str, result: Any, state: str, date_done: str) -> dict[str, Any]:
    """Build the same meta Celery writes, so AsyncResult and GET /v1/tasks read it unchanged."""
    if state in states.EXCEPTION_STATES:
        result = backend.prepare_exception(result)
    return {"status": state, "result": result, "traceback": None, "children": [], "date_done": date_done,
            "task_id": task_id}


def store_many(backend: Any, task_ids: Sequence[str], results: Sequence[Any], state: str,
               reply: tuple[str, bytes] | None = None, expires: int | None = None) -> None:
    """Write each id's result, and send ``reply`` (channel, message), in one round trip on Redis.

    Unlike Celery's own store, this does not PUBLISH per id: the waiting API process gets the whole
    batch on its reply channel, and anyone else reads these results by polling (GET /v1/tasks/<id>).
    """
    if not isinstance(backend, RedisBackend):
        for task_id, result in zip(task_ids, results, strict=True):
            backend.store_result(task_id, result, state)
        return  # other backends have no channel to reply on: the API falls back to reading results

    date_done = backend.app.now().isoformat()
    expires = expires or backend.expires or None
    with backend.client.pipeline(transaction=False) as pipe:
        for task_id, result in zip(task_ids, results, strict=True):
            # The backend is JSON-only (shared.celery_app), and orjson writes the same JSON several times faster.
            value = orjson.dumps(_meta(backend, task_id, result, state, date_done))
            pipe.set(backend.get_key_for_task(task_id), value, ex=expires)
        if reply is not None:
            pipe.publish(*reply)
        pipe.execute()
