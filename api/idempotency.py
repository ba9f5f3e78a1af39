"""Remember which task each Idempotency-Key queued, atomically across API processes (docs/api.md, "Idempotent
submits").

One record per key in the results Redis, a hash ``{f: the request's fingerprint, t: its task id, s: its status}``
under IDEMPOTENCY_PREFIX + a digest of the key and its scope (api/web/idempotency.py). A request claims its key
in one script (:data:`CLAIM`): it creates the record, pending (``s`` = 0) and expiring after ``claim_seconds``,
only when none exists, else reads the one there. So of two requests racing on two API processes exactly one
claims; the other reads the winner's task id and waits for its answer's status.

The claimer queues the task, then settles the record with the status it answers (202; for a batch 200, 504 or
500) and IDEMPOTENCY_TTL_SECONDS to live. Should the publish fail, it releases the claim instead, so a record
never names a task that was never queued, and a retry queues it. An API process that dies between its publish
and the settle leaves a pending record that expires after ``claim_seconds``: a retry within that window is told
to retry (409), and one after it queues the task again. That window is the one duplicate this allows.
"""

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from api.broker.circuit import REDIS_DOWN, Circuit
from api.errors import IdempotencyKeyInUse, IdempotencyKeyReused, QueueUnavailable

log = logging.getLogger(__name__)

PENDING = 0  # the status of a claimed record whose request has not answered yet

# KEYS: the record; ARGV: fingerprint, task id, seconds a pending claim lives. Nil: claimed; else the record found.
CLAIM = """
local found = redis.call('HMGET', KEYS[1], 'f', 't', 's')
if found[1] or found[2] then
  return found
end
redis.call('HSET', KEYS[1], 'f', ARGV[1], 't', ARGV[2], 's', '0')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return false
"""
# KEYS: the record; ARGV: the claimer's task id, its status, IDEMPOTENCY_TTL_SECONDS. Touches only its own claim.
SETTLE = """
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then
  redis.call('HSET', KEYS[1], 's', ARGV[2])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0
"""
# KEYS: the record; ARGV: the claimer's task id.
RELEASE = """
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class IdempotencyKey:
    """One request's key: the Redis key of its record, and the fingerprint of what it asked."""

    record: str
    fingerprint: str


@dataclass(frozen=True)
class Claim:
    """The task a key names; ``status`` None: this request claimed it and must queue it, else the first answer's."""

    key: IdempotencyKey
    task_id: str
    status: int | None


class IdempotencyStore:
    """Claim, settle and release Idempotency-Key records in the results Redis."""

    def __init__(self, results: redis.Redis, circuit: Circuit, ttl: int, claim_seconds: int) -> None:
        self._results = results
        self._circuit = circuit
        self._ttl = ttl
        self._claim_seconds = claim_seconds
        self._claiming = circuit.guard("claiming an Idempotency-Key")

    @functools.cached_property
    def _scripts(self) -> tuple[Any, Any, Any]:
        """Register the claim, settle and release scripts on the first keyed request (redis-py: EVALSHA, then EVAL)."""
        claim, settle, release = (self._results.register_script(source) for source in (CLAIM, SETTLE, RELEASE))
        return claim, settle, release

    def claim(self, key: IdempotencyKey, task_id: str, wait: float) -> Claim:
        """Claim ``key`` for ``task_id``, or return the task it names once its first request has answered.

        Raises IdempotencyKeyReused when the key came with another request, IdempotencyKeyInUse when its first
        request has not answered within ``wait`` seconds, QueueUnavailable when Redis is down.
        """
        if self._circuit.is_open():
            raise QueueUnavailable()
        deadline = time.monotonic() + wait
        pause = 0.005
        while True:
            with self._claiming:
                found = self._scripts[0](keys=[key.record], args=[key.fingerprint, task_id, self._claim_seconds])
            if found is None:
                return Claim(key, task_id, None)
            fingerprint, named, status = (value.decode() if value is not None else None for value in found)
            if fingerprint != key.fingerprint:
                raise IdempotencyKeyReused()
            if named is not None and status is not None and int(status) != PENDING:
                return Claim(key, named, int(status))
            if time.monotonic() + pause > deadline:  # its first request still answers (or died: see the module)
                raise IdempotencyKeyInUse()
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def settle(self, claim: Claim, status: int) -> None:
        """Record the status this request answers for its claim, kept IDEMPOTENCY_TTL_SECONDS.

        The task is queued by now, so a Redis failure here must not fail the request: the pending claim then
        expires on its own (see the module).
        """
        try:
            self._scripts[1](keys=[claim.key.record], args=[claim.task_id, int(status), self._ttl])
        except REDIS_DOWN as exc:  # reported, not raised: the task is queued and its request must answer
            log.warning("task %s: could not record its Idempotency-Key: %s", claim.task_id, type(exc).__name__)
            self._circuit.failed("recording an Idempotency-Key", exc)

    def release(self, claim: Claim) -> None:
        """Drop this request's claim: its task was not queued, so a retry must queue it."""
        try:
            self._scripts[2](keys=[claim.key.record], args=[claim.task_id])
        except REDIS_DOWN as exc:  # the pending claim expires after claim_seconds instead
            log.warning("task %s: could not release its Idempotency-Key: %s", claim.task_id, type(exc).__name__)
            self._circuit.failed("releasing an Idempotency-Key", exc)
