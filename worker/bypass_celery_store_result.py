"""Store a batch's per-row results in Celery's result format with one Lua script call, past ``store_result``.

Written against Celery 5.7.0. ``backend.store_result`` costs a GET, then a SET and a PUBLISH, per task id: about
250 µs of worker CPU each. The script writes every id of a batch and publishes the batch's one reply in a single
round trip, with the loop run by Redis. ``load/bench_fastpaths.py`` measured 200-290 µs of CPU per 16-row batch
against about 4,000 µs for the documented calls (0.4-0.7 ms against 7-8 ms of wall clock; README, "Fast paths").

What it takes from Celery's internals, each pinned by tests/unit/worker/test_bypass_celery_store_result.py:
the meta ``BaseBackend._get_result_meta`` builds and its JSON; ``RedisBackend.get_key_for_task``, ``.client``,
``.expires`` and ``.prepare_exception``; and ``BaseKeyValueStoreBackend._store_result``'s rule that a stored
SUCCESS is never overwritten (a redelivered batch must not turn an answered row into a failure), which the
script keeps. Unlike ``store_result``, it does not PUBLISH per id: the waiting API process gets the whole batch
on its reply channel, and anyone else reads these results by polling (GET /v1/tasks/<id>).

``fast=False`` (FAST_PATHS=0) stores through the documented calls alone: ``store_result`` per id, then one
redis-py pipeline that applies the TTL and publishes the reply.
"""

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
               reply: tuple[str, bytes] | None = None, expires: int | None = None, *, fast: bool = True) -> None:
    """Store each id's result for ``expires`` seconds (else the backend's), then send ``reply`` (channel, message).

    A result already stored as SUCCESS is kept, as Celery keeps it. ``fast=False`` uses documented calls only.
    """
    if not isinstance(backend, RedisBackend):
        for task_id, result in zip(task_ids, results, strict=True):
            backend.store_result(task_id, result, state)
        return  # other backends have no channel to reply on: the API falls back to reading results
    if not fast:
        _store_documented(backend, task_ids, results, state, reply, expires)
        return
    date_done = backend.app.now().isoformat()
    ttl = expires or backend.expires or 0
    # The backend is JSON-only (shared.celery_app), and orjson writes the same JSON several times faster.
    values = [orjson.dumps(_meta(backend, task_id, result, state, date_done))
              for task_id, result in zip(task_ids, results, strict=True)]
    channel, message = reply if reply is not None else ("", b"")
    _store_script(backend.client)(keys=[backend.get_key_for_task(task_id) for task_id in task_ids],
                                  args=[int(ttl), channel, message, *values])


def _store_documented(backend: RedisBackend, task_ids: Sequence[str], results: Sequence[Any], state: str,
                      reply: tuple[str, bytes] | None, expires: int | None) -> None:
    """Do what :func:`store_many` does with Celery's ``store_result`` and redis-py's pipeline."""
    for task_id, result in zip(task_ids, results, strict=True):
        backend.store_result(task_id, result, state)
    with backend.client.pipeline(transaction=False) as pipe:
        # store_result applied the backend's own expiry (result_expires). A SUCCESS it kept gets its TTL renewed.
        if expires:
            for task_id in task_ids:
                pipe.expire(backend.get_key_for_task(task_id), int(expires))
        if reply is not None:
            pipe.publish(*reply)
        pipe.execute()


# Redis runs the loop, so the worker packs and parses one command per batch instead of three per row. A stored
# SUCCESS is read with cjson; should it not decode, the status is matched as Celery's JSON ("status": "SUCCESS")
# and orjson ("status":"SUCCESS") write it.
_STORE_AND_REPLY = """
local function succeeded(value)
  if not value then
    return false
  end
  local ok, meta = pcall(cjson.decode, value)
  if ok and type(meta) == 'table' then
    return meta['status'] == 'SUCCESS'
  end
  return string.find(value, '"status": "SUCCESS"', 1, true) ~= nil
      or string.find(value, '"status":"SUCCESS"', 1, true) ~= nil
end

local ttl = tonumber(ARGV[1])
local stored = 0
for i, key in ipairs(KEYS) do
  if not succeeded(redis.call('GET', key)) then
    if ttl > 0 then
      redis.call('SET', key, ARGV[i + 3], 'EX', ttl)
    else
      redis.call('SET', key, ARGV[i + 3])
    end
    stored = stored + 1
  end
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return stored
"""


@functools.lru_cache(maxsize=4)
def _store_script(client: Any) -> Any:
    """Register the store-and-reply script on ``client`` once (redis-py sends EVALSHA, then EVAL if needed)."""
    return client.register_script(_STORE_AND_REPLY)
