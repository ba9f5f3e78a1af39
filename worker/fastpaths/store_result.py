"""Store a batch's per-row results in Celery's result format with one Lua script call, past ``store_result``.

Written against Celery 5.7.0. ``backend.store_result`` costs a GET, then a SET and a PUBLISH, per task id. The
script writes every id of a batch and publishes the batch's one reply in a single round trip, with the loop run
by Redis: a fraction of the documented calls' CPU and wall clock (``load/bench_fastpaths.py``; docs/design.md,
"Fast paths", has the figures).

What it takes from Celery's internals, each pinned by tests/unit/worker/fastpaths/test_store_result.py:
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
from datetime import datetime
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
               reply: tuple[str, bytes] | None = None, expires: int | None = None, *, fast: bool = True,
               hold: int | None = None, marks: str | None = None) -> None:
    """Store each id's result for ``expires`` seconds (else the backend's), then send ``reply`` (channel, message).

    With ``hold`` and ``marks``, an id is kept ``expires`` seconds only when the key ``marks + id`` exists (the API
    marks a sync row whose wait ended unanswered, so its poll URL needs the result), and ``hold`` seconds
    otherwise: long enough for the waiting request, not for Redis to fill with answers nobody will read. A
    result already stored as SUCCESS is kept, as Celery keeps it. ``fast=False`` uses documented calls only.
    """
    if not isinstance(backend, RedisBackend):
        for task_id, result in zip(task_ids, results, strict=True):
            backend.store_result(task_id, result, state)
        return  # other backends have no channel to reply on: the API falls back to reading results
    ttl = int(expires or backend.expires or 0)
    mark_keys = [f"{marks}{task_id}" for task_id in task_ids] if marks is not None and hold else []
    if not fast:
        _store_documented(backend, task_ids, results, state, reply, ttl, hold or 0, mark_keys)
        return
    date_done = date_done_now(backend.app)
    # The backend is JSON-only (shared.celery_app), and orjson writes the same JSON several times faster.
    values = [orjson.dumps(_meta(backend, task_id, result, state, date_done))
              for task_id, result in zip(task_ids, results, strict=True)]
    channel, message = reply if reply is not None else ("", b"")
    keys = [backend.get_key_for_task(task_id) for task_id in task_ids]
    _store_script(backend.client)(keys=[*keys, *mark_keys],
                                  args=[len(keys), ttl, hold or 0, channel, message, *values])


def date_done_now(app: Any) -> str:
    """Return ``app.now().isoformat()``, Celery's ``date_done``, without its naive-time checks (4% of a batch's CPU)."""
    return datetime.now(app.timezone).isoformat()


def _store_documented(backend: RedisBackend, task_ids: Sequence[str], results: Sequence[Any], state: str,
                      reply: tuple[str, bytes] | None, ttl: int, hold: int, mark_keys: list[str]) -> None:
    """Do what :func:`store_many` does with Celery's ``store_result`` and redis-py's pipeline."""
    for task_id, result in zip(task_ids, results, strict=True):
        backend.store_result(task_id, result, state)
    marked = backend.client.mget(mark_keys) if mark_keys else [b"1"] * len(task_ids)
    with backend.client.pipeline(transaction=False) as pipe:
        # store_result applied the backend's own expiry (result_expires). A SUCCESS it kept gets its TTL renewed.
        for task_id, mark in zip(task_ids, marked, strict=True):
            if mark is None:
                pipe.expire(backend.get_key_for_task(task_id), hold)
            elif ttl:
                pipe.expire(backend.get_key_for_task(task_id), ttl)
        if reply is not None:
            pipe.publish(*reply)
        pipe.execute()


# Redis runs the loop, so the worker packs and parses one command per batch instead of three per row. KEYS are the
# n result keys, then (when the API marks rows) each one's mark; ARGV is n, the TTL, the TTL of an unmarked row,
# the reply's channel and message, then the n values. The mark is read in the same atomic step as the write, so
# an API that marks a row before it reads the row's result (api/service.py) never misses a row kept too briefly.
# A stored SUCCESS is read with cjson; should it not decode, the status is matched as Celery's JSON
# ("status": "SUCCESS") and orjson ("status":"SUCCESS") write it.
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

local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local stored = 0
for i = 1, n do
  local key = KEYS[i]
  if not succeeded(redis.call('GET', key)) then
    local keep = ttl
    if #KEYS > n and redis.call('EXISTS', KEYS[n + i]) == 0 then
      keep = hold
    end
    if keep > 0 then
      redis.call('SET', key, ARGV[i + 5], 'EX', keep)
    else
      redis.call('SET', key, ARGV[i + 5])
    end
    stored = stored + 1
  end
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return stored
"""


@functools.lru_cache(maxsize=4)
def _store_script(client: Any) -> Any:
    """Register the store-and-reply script on ``client`` once (redis-py sends EVALSHA, then EVAL if needed)."""
    return client.register_script(_STORE_AND_REPLY)
