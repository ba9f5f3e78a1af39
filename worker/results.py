"""Store per-row results under their own task ids, in Celery's result format, in one round trip."""

import functools
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
    """Write each id's result, and send ``reply`` (channel, message), in one script call on Redis.

    Unlike Celery's own store, this does not PUBLISH per id: the waiting API process gets the whole
    batch on its reply channel, and anyone else reads these results by polling (GET /v1/tasks/<id>).
    """
    if not isinstance(backend, RedisBackend):
        for task_id, result in zip(task_ids, results, strict=True):
            backend.store_result(task_id, result, state)
        return  # other backends have no channel to reply on: the API falls back to reading results

    date_done = backend.app.now().isoformat()
    ttl = expires or backend.expires or 0
    # The backend is JSON-only (shared.celery_app), and orjson writes the same JSON several times faster.
    values = [orjson.dumps(_meta(backend, task_id, result, state, date_done))
              for task_id, result in zip(task_ids, results, strict=True)]
    channel, message = reply if reply is not None else ("", b"")
    _store_script(backend.client)(keys=[backend.get_key_for_task(task_id) for task_id in task_ids],
                                  args=[int(ttl), channel, message, *values])


# Redis runs the loop, so the worker packs and parses one command per batch instead of one per row:
# 375 µs of worker CPU per 7-row batch, against 551 µs for a pipeline of SETs (README, Performance).
_STORE_AND_REPLY = """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ttl > 0 then
    redis.call('SET', key, ARGV[i + 3], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[i + 3])
  end
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return #KEYS
"""


@functools.lru_cache(maxsize=4)
def _store_script(client: Any) -> Any:
    """Register the store-and-reply script on ``client`` once (redis-py sends EVALSHA, then EVAL if needed)."""
    return client.register_script(_STORE_AND_REPLY)
