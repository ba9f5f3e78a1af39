"""Classify and poll: the API's use of the queue, free of HTTP (routes turn its answers into envelopes)."""

import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import redis
from celery import Celery, states
from celery.result import AsyncResult
from kombu.exceptions import ContentDisallowed, DecodeError, KombuError

from api.batching.batcher import EdgeBatcher, Pending, PublishFailed, WorkerError
from api.batching.publisher import EdgePublisher
from api.batching.replies import ReplyListener
from api.broker.admission import Admission
from api.broker.circuit import REDIS_DOWN, Circuit
from api.errors import Conflict, QueueFull, QueueUnavailable, TaskFailed, TaskNotCancellable, TimedOut, Unavailable
from api.idempotency import Claim, IdempotencyKey, IdempotencyStore
from shared import revocation, tasks, webhooks
from shared.logs import current_request_id, set_task_id
from shared.schemas import FEATURES
from shared.settings import Settings
from shared.task_status import status_data

log = logging.getLogger(__name__)

# What Celery's backend raises on a stored meta it cannot decode (kombu's decoders, then Celery's own reading).
UNREADABLE_META = (DecodeError, ContentDisallowed, ValueError, TypeError, KeyError, AttributeError)
# The value of an issued id's key: queued by POST /v1/classify/async as a task of its own, so DELETE may cancel
# it; or any other (a sync row or batch that timed out, whose internal message may still run: never cancelled).
ISSUED_ASYNC, ISSUED_RESENT = b"async", b"1"
# Why DELETE refuses a task, by what shared.revocation.revoke found.
_FINISHED = "the task has finished ({state}); there is nothing to cancel"
_NOT_CANCELLABLE = {
    states.STARTED: "the task has started; a task can be cancelled only before a worker starts it",
    revocation.NOT_CANCELLABLE: "the task answers a synchronous request that timed out, and may be running; only "
                                "tasks queued by POST /v1/classify/async can be cancelled",
    revocation.UNREADABLE: "the task's stored state cannot be read; it cannot be cancelled",
}


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
        self._cancelling = circuit.guard("cancelling a task")
        # A pending claim outlives its request's longest answer: a batch's wait, then a resend's round trips.
        self._idempotent = IdempotencyStore(results, circuit, settings.idempotency_ttl_seconds,
                                            claim_seconds=math.ceil(settings.sync_timeout_seconds) + 10)

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

    def classify_async(self, payload: dict[str, Any], callback: str | None = None,
                       idempotency: IdempotencyKey | None = None) -> str:
        """Queue one classification as its own task and return its id at once; ``callback``: a webhook's URL;
        ``idempotency``: the request's key, which answers the task it queued before, if any, queueing nothing."""
        headers = {webhooks.CALLBACK_HEADER: callback} if callback else None
        if idempotency is None:
            return self._send(tasks.CLASSIFY, payload, remember=True, headers=headers)
        claim = self._claim(idempotency)
        if claim.status is None:
            with self._answering(claim, HTTPStatus.ACCEPTED):
                self._send(tasks.CLASSIFY, payload, remember=True, headers=headers, task_id=claim.task_id)
        return claim.task_id

    def classify_batch(self, rows: list[list[float]],
                       idempotency: IdempotencyKey | None = None) -> tuple[str, list[dict[str, Any]]]:
        """Classify one request's validated rows as one task and wait up to SYNC_TIMEOUT_SECONDS for the list;
        ``idempotency``: the request's key, which answers what its first request answered, queueing nothing."""
        if idempotency is None:
            return self._classify_table(rows)
        claim = self._claim(idempotency)
        if claim.status is not None:
            return self._replay_batch(claim)
        with self._answering(claim, HTTPStatus.OK):
            # Marked before it is queued, so the worker keeps its result for a retry to read (store_result.py).
            self._remember(claim.task_id, self._settings.result_expires_seconds)
            return self._classify_table(rows, claim.task_id)

    def _classify_table(self, rows: list[list[float]], task_id: str | None = None) -> tuple[str, list[dict[str, Any]]]:
        """Classify one batch request's rows as one task (under ``task_id``, else a new id) and wait for the list."""
        self._admission.admit()
        self._replies.ensure_started()
        request_id = current_request_id()
        pending = Pending(rows, request_id, time.monotonic())  # rows: this request's whole table
        if task_id is not None:
            pending.task_id = task_id
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

    def _claim(self, key: IdempotencyKey) -> Claim:
        """Claim ``key`` for a new task id, or return the task its first request queued (api/idempotency.py)."""
        claim = self._idempotent.claim(key, str(uuid.uuid4()), wait=self._settings.sync_timeout_seconds + 1)
        set_task_id(claim.task_id)
        return claim

    @contextmanager
    def _answering(self, claim: Claim, ok: int) -> Iterator[None]:
        """Record in ``claim`` the status its request answers (``ok``, 504 or 500: its task was queued); release
        it when the request fails before its task was queued, so that a retry queues it."""
        answered: int | None = None  # None: the request failed before its task was queued
        try:
            yield
            answered = ok
        except TimedOut:
            answered = HTTPStatus.GATEWAY_TIMEOUT
            raise
        except TaskFailed:
            answered = HTTPStatus.INTERNAL_SERVER_ERROR
            raise
        finally:
            if answered is None:
                self._idempotent.release(claim)
            else:
                self._idempotent.settle(claim, answered)

    def _replay_batch(self, claim: Claim) -> tuple[str, list[dict[str, Any]]]:
        """Answer a batch request again as its key's first request was answered, from its task's stored result."""
        if claim.status == HTTPStatus.GATEWAY_TIMEOUT:
            raise TimedOut(claim.task_id, self._settings.sync_timeout_seconds)
        if claim.status == HTTPStatus.INTERNAL_SERVER_ERROR:
            raise TaskFailed(claim.task_id, "this batch")
        meta = self._meta(claim.task_id)
        if meta.get("status") == states.SUCCESS:
            return claim.task_id, meta["result"]
        # Kept RESULT_EXPIRES_SECONDS, the key IDEMPOTENCY_TTL_SECONDS: queueing it again would break the promise.
        raise Conflict("the batch this Idempotency-Key answered has expired; send a new key to classify it again",
                       data={"task_id": claim.task_id}, raised="IdempotencyResultExpired")

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
        # The same data a webhook posts (worker/webhooks.py): shared.task_status builds both.
        return status_data(task_id, state, result.result if state in states.READY_STATES else None)

    def cancel(self, task_id: str) -> dict[str, Any] | None:
        """Revoke a task that has not started and return its state, REVOKED; None for an id this service never
        issued; TaskNotCancellable once it started or finished, or when it is not a task of its own.

        One script decides, atomically with the worker's own start (shared/revocation.py), so the task either
        runs or is revoked, never both, whether or not a worker is up to hear Celery's broadcast.
        """
        if self._circuit.is_open():
            raise QueueUnavailable()
        with self._cancelling:
            outcome = revocation.revoke(self._celery.backend, self._results, task_id, self._issued_key(task_id),
                                        ISSUED_ASYNC, self._settings.result_expires_seconds)
        if outcome == revocation.UNKNOWN:
            return None
        if outcome == revocation.REVOKED_NOW:
            self._broadcast_revoke(task_id)
        elif outcome != states.REVOKED:  # a second DELETE answers as the first did
            raise TaskNotCancellable(task_id, _NOT_CANCELLABLE.get(outcome, _FINISHED).format(state=outcome),
                                     outcome if outcome in states.ALL_STATES else None)
        return self.status(task_id)

    def _broadcast_revoke(self, task_id: str) -> None:
        """Tell running workers too (Celery's revoke, best effort): one that holds the message prefetched drops it
        unrun; the stored REVOKED already stops any other, so a failure here changes nothing."""
        try:
            self._celery.control.revoke(task_id)
        except (*REDIS_DOWN, KombuError) as exc:  # reported, not raised: the stored REVOKED is what counts
            log.info("task %s: revoked, but the revoke broadcast failed: %s", task_id, type(exc).__name__)
            self._circuit.failed("broadcasting a revoke", exc)

    def _send(self, name: str, argument: Any, remember: bool = False, headers: dict[str, str] | None = None,
              task_id: str | None = None) -> str:
        """Admit, then send task ``name`` with one argument under a new id; QueueUnavailable if the broker is down,
        QueueFull if it refuses the task.

        With ``remember``, the id is recorded first, so that a task once queued can always be polled.
        """
        self._admission.admit()
        task_id = task_id or str(uuid.uuid4())
        set_task_id(task_id)
        if remember:
            self._remember(task_id, self._settings.result_expires_seconds, ISSUED_ASYNC)
        self._publish(name, argument, task_id, current_request_id(), headers)
        return task_id

    def _publish(self, name: str, argument: Any, task_id: str, request_id: str | None,
                 headers: dict[str, str] | None = None) -> None:
        """Send task ``name`` with one argument under ``task_id``; QueueUnavailable if the broker is down, QueueFull
        if it refuses the task (api/broker/circuit.py's guard)."""
        with self._enqueuing:
            if request_id is not None:
                headers = {**(headers or {}), "request_id": request_id}
            self._celery.send_task(name, args=[argument], task_id=task_id, queue=self._settings.iris_queue,
                                   headers=headers)

    def _issued_key(self, task_id: str) -> str:
        """Name the key recording that this service issued ``task_id`` (polling answers 404 for any other)."""
        return f"{self._settings.issued_prefix}{task_id}"

    def _remember(self, task_id: str, ttl: int, mark: bytes = ISSUED_RESENT) -> None:
        """Record an issued id so its poll URL answers (``mark``: whether DELETE may cancel it); if Redis is gone,
        the client learns why."""
        with self._recording:
            self._results.set(self._issued_key(task_id), mark, ex=ttl)

    def _meta(self, task_id: str) -> dict[str, Any]:
        """Read a task's stored meta (PENDING when nothing is stored, or what is stored cannot be read)."""
        try:
            with self._rereading:
                return self._celery.backend.get_task_meta(task_id)
        except UNREADABLE_META as exc:
            # A meta anyone with Redis access wrote badly: as if nothing were stored, so the row is sent again.
            log.warning("task %s: its stored result cannot be read: %s", task_id, exc)
            return {"status": states.PENDING, "result": None}
