"""Classify and poll: the API's use of the queue, free of HTTP (routes turn its answers into envelopes)."""

import logging
import time
import uuid
from typing import Any

import redis
from celery import Celery, states
from celery.result import AsyncResult

from api.admission import Admission
from api.batcher import EdgeBatcher, PublishFailed
from api.circuit import REDIS_DOWN, Circuit
from api.errors import QueueUnavailable, TaskFailed, TimedOut
from api.replies import ReplyListener
from shared import tasks
from shared.logs import current_request_id, set_task_id
from shared.settings import Settings

log = logging.getLogger(__name__)


class ClassifyService:
    """Sync rows go through the edge batcher; async and batch requests are tasks of their own."""

    def __init__(self, settings: Settings, celery: Celery, batcher: EdgeBatcher, replies: ReplyListener,
                 admission: Admission, circuit: Circuit, results: redis.Redis) -> None:
        self._settings = settings
        self._celery = celery
        self._batcher = batcher
        self._replies = replies
        self._admission = admission
        self._circuit = circuit
        self._results = results

    def classify(self, row: list[float]) -> tuple[str, dict[str, Any]]:
        """Classify one row through the edge batcher and wait up to SYNC_TIMEOUT_SECONDS."""
        self._admission.admit()
        self._replies.ensure_started()
        pending = self._batcher.submit(row, current_request_id())
        set_task_id(pending.task_id)
        if not pending.wait(self._settings.sync_timeout_seconds):
            self._batcher.forget(pending)
            # The reply may have been missed while the listener reconnected: the backend has the truth.
            meta = self._meta(pending.task_id)
            if meta.get("status") == states.SUCCESS:
                return pending.task_id, meta["result"]
            self._remember(pending.task_id, self._settings.row_result_expires_seconds)
            raise TimedOut(pending.task_id, self._settings.sync_timeout_seconds)
        if isinstance(pending.error, PublishFailed):
            raise QueueUnavailable()
        if pending.error is not None:
            raise TaskFailed(pending.task_id)
        return pending.task_id, pending.result

    def classify_async(self, payload: dict[str, Any]) -> str:
        """Queue one classification as its own task and return its id at once."""
        return self._send(tasks.CLASSIFY, payload, remember=True)

    def classify_batch(self, payloads: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        """Classify many rows in one task and wait for the list of answers."""
        task_id = self._send(tasks.CLASSIFY_BATCH, payloads)
        try:
            meta = self._wait_for_result(task_id, self._settings.sync_timeout_seconds)
        except REDIS_DOWN:
            self._circuit.trip()
            raise QueueUnavailable() from None
        if meta is None:  # the work stays queued and can be polled
            self._remember(task_id, self._settings.result_expires_seconds)
            raise TimedOut(task_id, self._settings.sync_timeout_seconds)
        if meta["status"] != states.SUCCESS:
            raise TaskFailed(task_id, "this batch")
        return task_id, meta["result"]

    def status(self, task_id: str) -> dict[str, Any] | None:
        """Return a task's state, or None for an id this service never issued; QueueUnavailable while Redis is down."""
        if self._circuit.is_open():
            raise QueueUnavailable()
        result = AsyncResult(task_id, app=self._celery)
        try:
            state = result.state
            if state == states.PENDING and not self._results.exists(self._issued_key(task_id)):
                return None
        except REDIS_DOWN as exc:
            log.warning("cannot read task %s: %s", task_id, exc)
            self._circuit.trip()
            raise QueueUnavailable() from None
        body: dict[str, Any] = {"task_id": task_id, "status": state, "result": None, "error": None}
        if state == states.SUCCESS:
            body["result"] = result.result
        elif state in states.PROPAGATE_STATES:
            failure = result.result
            body["error"] = {"raised": type(failure).__name__, "message": str(failure)}
        return body

    def _send(self, name: str, argument: Any, remember: bool = False) -> str:
        """Admit, then send task ``name`` with one argument under a new id; QueueUnavailable if Redis refuses.

        With ``remember``, the id is recorded first, so that a task once queued can always be polled.
        """
        self._admission.admit()
        task_id = str(uuid.uuid4())
        set_task_id(task_id)
        request_id = current_request_id()
        if remember:
            self._remember(task_id, self._settings.result_expires_seconds)
        try:
            self._celery.send_task(name, args=[argument], task_id=task_id, queue=self._settings.iris_queue,
                                   headers={"request_id": request_id} if request_id is not None else None)
        except Exception as exc:
            log.warning("cannot enqueue %s %s: %s", name, task_id, exc)
            self._circuit.trip()
            raise QueueUnavailable() from None
        return task_id

    def _wait_for_result(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """Read the task's stored result until it is ready, backing off from 2 to 50 ms; None on timeout.

        Not ``AsyncResult.get()``: on Redis it subscribes per task, and a result that arrives on the
        subscription after get() returned stays in a per-thread buffer for good (celery#8166). That grew one
        API process by 3 MB a minute in the soak (README, "Soak test"). A batch takes milliseconds, so a few
        GETs cost less than the subscribe and unsubscribe they replace.
        """
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            meta = self._celery.backend.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.05)

    def _issued_key(self, task_id: str) -> str:
        """Name the key recording that this service issued ``task_id`` (polling answers 404 for any other)."""
        return f"{self._settings.key_prefix}task:{task_id}"

    def _remember(self, task_id: str, ttl: int) -> None:
        """Record a timed-out id so its poll URL answers; if Redis is gone, the client learns why."""
        try:
            self._results.set(self._issued_key(task_id), b"1", ex=ttl)
        except redis.RedisError:
            self._circuit.trip()
            raise QueueUnavailable() from None

    def _meta(self, task_id: str) -> dict[str, Any]:
        """Read a task's stored meta (PENDING when nothing is stored or Redis fails)."""
        try:
            return self._celery.backend.get_task_meta(task_id)
        except Exception:
            return {"status": states.PENDING, "result": None}
