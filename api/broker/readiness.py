"""GET /readyz's check: Redis answers, and at least one worker with a loaded model replies, within seconds; the
body lists what each worker serves, and the champion and challenger versions across them."""

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import ContentDisallowed, DecodeError

from api.broker.admission import Admission
from api.broker.circuit import REDIS_DOWN, Circuit
from api.errors import NoWorkers, QueueUnavailable
from shared import tasks
from shared.redact import redact

log = logging.getLogger(__name__)

# How long workers get to reply to the model-info broadcast (every worker's reply is awaited, so /readyz lists
# what each one serves), and how long a request waits for a check at most.
REPLY_SECONDS = 1.5
WAIT_SECONDS = 2.5
# A reading younger than this many times max_age is answered at once while a fresh check runs behind it, so
# frequent probes (Kubernetes' default timeout is 1 s) do not wait out REPLY_SECONDS; older ones wait.
STALE_FACTOR = 2
# How deep redact_strings follows a worker's reply; deeper values are dropped, not recursed into.
MAX_LEVELS = 8


class WorkerCheck:
    """Ask the workers for their model, at most every ``max_age`` seconds, off the request thread.

    kombu retries the broadcast's publish without limit while Redis refuses, so it runs in one helper
    thread and the request waits at most WAIT_SECONDS for it; a check still running is joined, not repeated.
    """

    def __init__(self, celery: Celery, circuit: Circuit, max_age: float = 2.0) -> None:
        self.celery = celery
        self.circuit = circuit
        self.max_age = max_age
        self._pid: int | None = None
        self._running: Future[dict[str, Any]] | None = None
        self._last: tuple[float, dict[str, Any]] = (0.0, {})

    def workers(self) -> dict[str, Any]:
        """Return {worker name: model info} of the workers that replied; raise a 503 if the check hangs."""
        checked, workers = self._last
        age = time.monotonic() - checked
        if workers and age < self.max_age:
            return workers
        if self._pid != os.getpid():  # threads do not survive a fork: one pool per server process
            self._pool, self._pid, self._running = ThreadPoolExecutor(1, "iris-readiness"), os.getpid(), None
        if self._running is None or self._running.done():
            self._running = self._pool.submit(self._ask)
        if workers and age < self.max_age * STALE_FACTOR:
            return workers  # the check just started refreshes the reading for the next request
        try:
            return self._running.result(timeout=WAIT_SECONDS)
        except FutureTimeout:
            raise QueueUnavailable("Redis does not answer") from None

    def _ask(self) -> dict[str, Any]:
        replies: list[dict[str, Any]] = []
        for attempt in (1, 2):  # after Redis restarts, the pooled connection fails once; a fresh one answers
            try:
                replies = self.celery.control.broadcast(tasks.MODEL_INFO_COMMAND, reply=True,
                                                        timeout=REPLY_SECONDS) or []
                break
            except REDIS_DOWN as exc:
                if attempt == 2:
                    self.circuit.failed("asking the workers for their models", exc)
            except (DecodeError, ContentDisallowed) as exc:  # a reply someone wrote badly: ask again
                log.warning("readiness: a reply to the broadcast cannot be read: %s", exc)
        # Served as they are by /readyz, /version and /metrics, so first rid of any password a URL in them holds:
        # a worker's failed registry check names the MLflow URI (and an older worker may send one anywhere).
        workers = {redact(str(name)): redact_strings(info) for reply in replies if isinstance(reply, dict)
                   for name, info in reply.items() if isinstance(info, dict) and info.get("model_version")}
        self._last = (time.monotonic(), workers)
        return workers


def redact_strings(value: Any, levels: int = MAX_LEVELS) -> Any:
    """Return ``value`` with every string in it, keys included, passed through :func:`shared.redact.redact`;
    what nests deeper than ``levels`` is dropped (a worker's model info nests three levels)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        if levels <= 0:
            return None
        return {redact_strings(key, levels - 1): redact_strings(item, levels - 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_strings(item, levels - 1) for item in value] if levels > 0 else None
    return value


def served_models(workers: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Return (role, model name, version) of every champion the workers serve and every challenger they shadow."""
    served = set()
    for info in workers.values():
        challenger = info.get("challenger")
        for role, model in (("champion", info), ("challenger", challenger if isinstance(challenger, dict) else {})):
            if model.get("model_version") is not None:
                served.add((role, str(model.get("model_name")), str(model["model_version"])))
    return served


class Readiness:
    """Redis (broker and result backend) answers and a worker with a loaded model does; else a 503."""

    def __init__(self, results: redis.Redis, admission: Admission, workers: WorkerCheck, circuit: Circuit) -> None:
        self._results = results
        self._admission = admission
        self.workers = workers
        self._circuit = circuit
        self._guard = circuit.guard("checking readiness", "Redis does not answer")

    def check(self) -> dict[str, Any]:
        """Return the ready body, or raise QueueUnavailable or NoWorkers."""
        if self._circuit.is_open():
            raise QueueUnavailable("Redis does not answer")
        with self._guard:
            self._results.ping()
            depths = self._admission.depths(fresh=True)
        workers = self.workers.workers()
        if not workers:
            raise NoWorkers()
        # models: the versions across the workers by role, which a half-finished rollout shows as two champions.
        served = served_models(workers)
        models = {role: sorted({version for held, _, version in served if held == role})
                  for role in ("champion", "challenger")}
        # queue_depth: both queues together, what QUEUE_MAX_LENGTH bounds; queue_depths: each one.
        return {"status": "ready", "workers": workers, "models": models, "queue_depth": sum(depths.values()),
                "queue_depths": depths}
