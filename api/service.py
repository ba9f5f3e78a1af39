"""Classify and poll: the API's use of the queue, free of HTTP (routes turn its answers into envelopes)."""

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, states
from celery.result import AsyncResult
from kombu.exceptions import ContentDisallowed, DecodeError

from api.batching.batcher import EdgeBatcher, Pending, PublishFailed, WorkerError
from api.batching.publisher import EdgePublisher
from api.batching.replies import ReplyListener
from api.broker.admission import Admission
from api.broker.circuit import Circuit
from api.errors import QueueFull, QueueUnavailable, TaskFailed, TimedOut, Unavailable
from shared import tasks
from shared.logs import current_request_id, set_task_id
from shared.redact import redact
from shared.schemas import FEATURES
from shared.settings import Settings

log = logging.getLogger(__name__)

# What Celery's backend raises on a stored meta it cannot decode (kombu's decoders, then Celery's own reading).
UNREADABLE_META = (DecodeError, ContentDisallowed, ValueError, TypeError, KeyError, AttributeError)


class ClassifyService:
    """Sync rows go through the edge batcher; async and batch requests are tasks of their own."""

    def __init__(self, settings: Settings, celery: Celery, batcher: EdgeBatcher, publisher: EdgePublisher,
                 replies: ReplyListener, admission: Admission, circuit: Circuit, results: redis.Redis) -> None:
        self._settings = settings
        self._celery = celery
        self._batcher = batcher
        self._publisher = publisher
        # Batch requests waiting for their reply, by task id: answered by :meth:`deliver`, not batched.
        self._tables: dict[str, Pending] = {}
        self._replies = replies
        self._admission = admission
        self._circuit = circuit
        self._results = results
        # One guard per kind of Redis call (api/broker/circuit.py): log once per outage, trip, answer 503.
        self._enqueuing = circuit.guard("enqueuing a task")
        self._polling = circuit.guard("reading a task's state")
        self._recording = circuit.guard("recording an issued task id")
        self._rereading = circuit.guard("reading a timed-out task's result")

    def classify(self, row: list[float]) -> tuple[str, dict[str, Any]]:
        """Classify one row through the edge batcher and wait up to SYNC_TIMEOUT_SECONDS."""
        self._admission.admit()
        self._replies.ensure_started()
        pending = self._batcher.submit(row, current_request_id())
        set_task_id(pending.task_id)
        if not pending.wait(self._settings.sync_timeout_seconds):
            self._batcher.forget(pending)
            self._remember(pending.task_id, self._settings.row_result_expires_seconds)
            # The reply may have been missed while the listener reconnected: the backend has the truth.
            meta = self._meta(pending.task_id)
            if meta.get("status") == states.SUCCESS:
                return pending.task_id, meta["result"]
            # Workers take edge batches without acknowledgements (shared.celery_app.rows_queue): had this row's
            # batch died with its worker, nothing would ever answer the poll URL. Send the row again as a task
            # of its own, acknowledged like an async one; if the batch was only slow, the first answer stays.
            # Admitted with the request, not again, but counted: it fills the queue as any message does.
            self._admission.count()
            self._publish(tasks.CLASSIFY, dict(zip(FEATURES, pending.row, strict=True)), pending.task_id,
                          pending.request_id)
            raise TimedOut(pending.task_id, self._settings.sync_timeout_seconds)
        if isinstance(pending.error, PublishFailed):
            raise QueueFull() if pending.error.refused else QueueUnavailable()
        if pending.error is not None:
            raise TaskFailed(pending.task_id)
        return pending.task_id, pending.result

    def classify_async(self, payload: dict[str, Any]) -> str:
        """Queue one classification as its own task and return its id at once."""
        return self._send(tasks.CLASSIFY, payload, remember=True)

    def classify_batch(self, rows: list[list[float]]) -> tuple[str, list[dict[str, Any]]]:
        """Classify one request's validated rows as one task and wait up to SYNC_TIMEOUT_SECONDS for the list."""
        self._admission.admit()
        self._replies.ensure_started()
        request_id = current_request_id()
        pending = Pending(rows, request_id, time.monotonic())  # rows: this request's whole table
        set_task_id(pending.task_id)
        self._tables[pending.task_id] = pending
        try:
            with self._enqueuing:
                self._publisher.table(rows, pending.task_id, request_id)
        except Unavailable:  # unreachable, or the broker refused it: no reply will come
            self._tables.pop(pending.task_id, None)
            raise
        if not pending.wait(self._settings.sync_timeout_seconds):
            self._tables.pop(pending.task_id, None)
            self._remember(pending.task_id, self._settings.result_expires_seconds)
            meta = self._meta(pending.task_id)
            if meta.get("status") == states.SUCCESS:
                return pending.task_id, meta["result"]
            # As for a sync row: send the rows again as the public, acknowledged task, so the poll URL answers.
            self._admission.count()
            self._publish(tasks.CLASSIFY_BATCH, [dict(zip(FEATURES, row, strict=True)) for row in rows],
                          pending.task_id, request_id)
            raise TimedOut(pending.task_id, self._settings.sync_timeout_seconds)
        if pending.error is not None:
            raise TaskFailed(pending.task_id, "this batch")
        return pending.task_id, pending.result

    def deliver(self, task_ids: Sequence[str], results: Sequence[Any] | None, error: WorkerError | None) -> None:
        """Hand a worker's reply to the batch request waiting for it, or else to the edge batcher."""
        if len(task_ids) == 1 and (table := self._tables.pop(task_ids[0], None)) is not None:
            table.resolve(result=results[0] if results else None, error=error)
        else:
            self._batcher.deliver(task_ids, results, error)

    def status(self, task_id: str) -> dict[str, Any] | None:
        """Return a task's state, or None for an id this service never issued; QueueUnavailable while Redis is down."""
        if self._circuit.is_open():
            raise QueueUnavailable()
        result = AsyncResult(task_id, app=self._celery)
        with self._polling:
            state = result.state
            if state == states.PENDING and not self._results.exists(self._issued_key(task_id)):
                return None
        body: dict[str, Any] = {"task_id": task_id, "status": state, "result": None, "error": None}
        if state == states.SUCCESS:
            body["result"] = result.result
        elif state in states.PROPAGATE_STATES:
            failure = result.result
            # The worker's exception text, served to the client: rid of any password a URL in it holds.
            body["error"] = {"raised": type(failure).__name__, "message": redact(str(failure))}
        return body

    def _send(self, name: str, argument: Any, remember: bool = False) -> str:
        """Admit, then send task ``name`` with one argument under a new id; QueueUnavailable if the broker is down,
        QueueFull if it refuses the task.

        With ``remember``, the id is recorded first, so that a task once queued can always be polled.
        """
        self._admission.admit()
        task_id = str(uuid.uuid4())
        set_task_id(task_id)
        if remember:
            self._remember(task_id, self._settings.result_expires_seconds)
        self._publish(name, argument, task_id, current_request_id())
        return task_id

    def _publish(self, name: str, argument: Any, task_id: str, request_id: str | None) -> None:
        """Send task ``name`` with one argument under ``task_id``; QueueUnavailable if the broker is down, QueueFull
        if it refuses the task (api/broker/circuit.py's guard)."""
        with self._enqueuing:
            self._celery.send_task(name, args=[argument], task_id=task_id, queue=self._settings.iris_queue,
                                   headers={"request_id": request_id} if request_id is not None else None)

    def _issued_key(self, task_id: str) -> str:
        """Name the key recording that this service issued ``task_id`` (polling answers 404 for any other)."""
        return f"{self._settings.issued_prefix}{task_id}"

    def _remember(self, task_id: str, ttl: int) -> None:
        """Record a timed-out id so its poll URL answers; if Redis is gone, the client learns why."""
        with self._recording:
            self._results.set(self._issued_key(task_id), b"1", ex=ttl)

    def _meta(self, task_id: str) -> dict[str, Any]:
        """Read a task's stored meta (PENDING when nothing is stored, or what is stored cannot be read)."""
        try:
            with self._rereading:
                return self._celery.backend.get_task_meta(task_id)
        except UNREADABLE_META as exc:
            # A meta anyone with Redis access wrote badly: as if nothing were stored, so the row is sent again.
            log.warning("task %s: its stored result cannot be read: %s", task_id, exc)
            return {"status": states.PENDING, "result": None}
