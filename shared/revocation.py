"""Cancel a queued task through the result backend, so that either the cancel or the task's start wins, never both.

Celery's ``revoke`` is a broadcast: a worker that is down, frozen or not yet started never hears it, and the task
runs when it comes back. The revocation is therefore written where every worker looks before it runs a task, the
task's result meta in the result backend, and both sides are one Lua script each, run atomically by Redis:

- :data:`REVOKE` (the API's ``DELETE /v1/tasks/<id>``) writes the REVOKED meta only while the task has no stored
  state (it has not started) and the API issued it as a task of its own, else answers what it found;
- :data:`START` (the worker, in place of Celery's ``task_track_started`` write) marks the task STARTED unless its
  meta says REVOKED, and then says so, and the worker does not run it (worker/revocation.py).

Whichever script Redis runs first decides: a task marked STARTED is not cancelled (409), and a task marked REVOKED
never starts, so the worker never stores a result over a REVOKED meta either. Both write Celery's own meta (the
fields ``BaseBackend._get_result_meta`` builds, JSON), so ``AsyncResult`` and ``GET /v1/tasks/<id>`` read them
unchanged; tests/integration/api/routes/test_cancel.py reads them back through Celery.
"""

from datetime import UTC, datetime
from typing import Any

import orjson
from celery import states
from celery.exceptions import TaskRevokedError

from shared.redis_scripts import registered

# What REVOKE answers besides a stored state (STARTED, SUCCESS, FAILURE, RETRY, REVOKED...).
REVOKED_NOW = "REVOKED_NOW"  # this call wrote the REVOKED meta
UNKNOWN = "UNKNOWN"  # never issued here (or expired), and nothing stored: a 404
NOT_CANCELLABLE = "NOT_CANCELLABLE"  # issued, but not as a task of its own: an internal message may still run it
UNREADABLE = "UNREADABLE"  # a stored meta that is not Celery's JSON

# Reads the stored status with cjson (the backend is JSON-only). KEYS: the task's meta, its issued mark; ARGV: the
# mark's value that makes it cancellable, the REVOKED meta, its TTL.
REVOKE = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, meta = pcall(cjson.decode, stored)
  if not ok or type(meta) ~= 'table' or type(meta['status']) ~= 'string' then
    return 'UNREADABLE'
  end
  if meta['status'] ~= 'PENDING' then
    return meta['status']
  end
end
local mark = redis.call('GET', KEYS[2])
if not mark then
  return 'UNKNOWN'
end
if mark ~= ARGV[1] then
  return 'NOT_CANCELLABLE'
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 'REVOKED_NOW'
"""

# KEYS: the task's meta; ARGV: the STARTED meta, its TTL. Returns 0 when the task is REVOKED, else 1. A stored
# SUCCESS is kept (a redelivered message), as Celery's own store_result keeps it.
START = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, meta = pcall(cjson.decode, stored)
  if ok and type(meta) == 'table' then
    if meta['status'] == 'REVOKED' then
      return 0
    end
    if meta['status'] == 'SUCCESS' then
      return 1
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""


def _meta(task_id: str, state: str, result: Any, done: bool) -> bytes:
    """Return Celery's result meta for ``task_id`` as JSON (``date_done`` only for a ready state, as Celery sets it)."""
    return orjson.dumps({"status": state, "result": result, "traceback": None, "children": [],
                         "date_done": datetime.now(UTC).isoformat() if done else None, "task_id": task_id})


def revoked_meta(backend: Any, task_id: str) -> bytes:
    """Return the REVOKED meta Celery's ``mark_as_revoked`` would store for ``task_id``."""
    error = TaskRevokedError("cancelled by DELETE /v1/tasks before it ran")
    return _meta(task_id, states.REVOKED, backend.prepare_exception(error), done=True)


def started_meta(task_id: str, pid: int, hostname: str) -> bytes:
    """Return the STARTED meta Celery's tracer stores when ``task_track_started`` is on."""
    return _meta(task_id, states.STARTED, {"pid": pid, "hostname": hostname}, done=False)


def revoke(backend: Any, client: Any, task_id: str, issued_key: str, cancellable: bytes, ttl: int) -> str:
    """Revoke ``task_id`` unless it has started: REVOKED_NOW, or the state found, UNKNOWN or NOT_CANCELLABLE."""
    answer = registered(client, REVOKE)(keys=[backend.get_key_for_task(task_id), issued_key],
                                     args=[cancellable, revoked_meta(backend, task_id), ttl])
    return answer.decode() if isinstance(answer, bytes) else str(answer)


def start(backend: Any, task_id: str, pid: int, hostname: str) -> bool:
    """Mark ``task_id`` STARTED unless it was revoked; False: it was, and must not run."""
    ttl = int(backend.expires or 86400)
    started = registered(backend.client, START)(keys=[backend.get_key_for_task(task_id)],
                                             args=[started_meta(task_id, pid, hostname), ttl])
    return bool(started)
