"""The API's side of the queue: enqueue by task name, wait, poll, and check the workers' health."""

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

import redis
from celery import Celery, states
from celery.result import AsyncResult
from flask import Flask, current_app
from kombu import serialization
from kombu.exceptions import ChannelError

from api.batcher import EdgeBatcher
from api.circuit import REDIS_DOWN, Circuit
from api.envelope import ApiError
from api.fail_fast import bound_celery, redis_client
from api.readiness import WorkerCheck, not_ready
from api.results_backend import polling_backend_url
from shared import tasks
from shared.celery_app import create_celery
from shared.logs import current_request_id, set_task_id
from shared.settings import Settings

log = logging.getLogger(__name__)


def unavailable() -> ApiError:
    """Return the 503 for a broker or result backend that does not answer; nothing was queued."""
    return ApiError(503, "QueueUnavailable", "the task queue is unreachable; try again shortly",
                    headers={"Retry-After": "1"})


def _release(kept: tuple[Any, Any] | None) -> None:
    """Release a kept (connection, channel) pair; a connection that already died is fine."""
    if kept is not None:
        with contextlib.suppress(Exception):
            kept[0].release()


class TimedOut(Exception):
    """The sync wait ended before a worker answered; the task is still queued under ``task_id``."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


class IrisQueue:
    """Flask extension holding the Celery client, the edge batcher and the Redis handles."""

    def __init__(self, app: Flask | None = None, settings: Settings | None = None) -> None:
        if app is not None and settings is not None:
            self.init_app(app, settings)

    def init_app(self, app: Flask, settings: Settings) -> None:
        """Create the clients; nothing connects until the first request."""
        self.settings = settings
        self.celery: Celery = create_celery(settings)
        bound_celery(self.celery, settings.api_redis_timeout_seconds)
        self.celery.conf.result_backend = polling_backend_url(settings.celery_result_backend)
        self.results = redis_client(settings.celery_result_backend, settings.api_redis_timeout_seconds)
        self.circuit = Circuit(open_seconds=1.0)
        self.worker_check = WorkerCheck(self.celery)
        self.batcher = EdgeBatcher(self._publish_rows, settings.celery_result_backend, settings.key_prefix,
                                   settings.batch_max_size, settings.batch_max_wait_ms,
                                   settings.batch_max_in_flight,
                                   reply_timeout=min(settings.sync_timeout_seconds, 2.0))
        self._depth_lock = threading.Lock()
        self._depth: tuple[float, int] = (0.0, 0)
        self._batch: tuple[Any, Any] | None = None
        self._probe: tuple[Any, Any] | None = None
        app.extensions["iris_queue"] = self

    # -- enqueueing -------------------------------------------------------------------------------

    def _down(self) -> ApiError:
        """Note that Redis failed (the next second's requests answer 503 at once) and return the 503."""
        self.circuit.trip()
        return unavailable()

    def _publish_rows(self, rows: list[list[float]], task_ids: list[str], reply_to: str,
                      request_ids: list[str | None]) -> None:
        """Send one edge batch as a single ``iris.classify_rows`` task message.

        The message is the one ``send_task`` builds, put on a channel the flusher thread keeps. It skips
        send_task's per-call queue declaration and publish wrappers, which cost more than the publish.
        ``request_ids`` (aligned with ``task_ids``) travels as a header that older workers ignore.
        """
        if self.circuit.is_open():
            raise unavailable()
        headers, properties, body, _ = self.celery.amqp.as_task_v2(
            str(uuid.uuid4()), tasks.CLASSIFY_ROWS, args=[rows, task_ids, reply_to],
            # argsrepr: Celery would otherwise repr() every row into the headers. ignore_result: the
            # answers go to reply_to and each row's own id, never to this message's id.
            argsrepr=f"({len(rows)} rows)", ignore_result=True)
        headers["request_ids"] = request_ids
        content_type, encoding, data = serialization.dumps(body, "json")
        for attempt in (1, 2):  # a kept connection may have gone stale: retry once on a fresh one
            try:
                channel = self._batch_channel()
                message = channel.prepare_message(data, None, content_type, encoding, dict(headers),
                                                  {**properties, "delivery_mode": 2})  # persistent
                channel.basic_publish(message, exchange="", routing_key=self.settings.iris_queue)
                return
            except Exception as exc:
                self._close_batch_channel()
                # A hung Redis times out again on a fresh connection: only a dropped one is worth a retry.
                if attempt == 2 or isinstance(exc, redis.TimeoutError):
                    self.circuit.trip()
                    raise

    def _batch_channel(self) -> Any:
        """Return the flusher's broker channel, connecting and declaring the queue once per connection."""
        if self._batch is None:
            conn = self.celery.connection_for_write()
            try:
                channel = conn.default_channel  # connects under the transport options: no retry, no sleep
                # On AMQP a message for an undeclared queue is dropped; on Redis this is a cheap no-op.
                self.celery.amqp.queues[self.settings.iris_queue].bind(channel).declare()
            except Exception:
                conn.release()
                raise
            self._batch = (conn, channel)
        return self._batch[1]

    def _close_batch_channel(self) -> None:
        """Drop the flusher's connection, so the next batch opens a fresh one."""
        kept, self._batch = self._batch, None
        _release(kept)

    def queue_depth(self, max_age: float = 0.25) -> int:
        """Return the queue's length, asking the broker at most every ``max_age`` seconds.

        One thread refreshes while the others keep using the last reading, so a slow broker round trip
        never stalls the request path.
        """
        checked, depth = self._depth
        if time.monotonic() - checked < max_age or not self._depth_lock.acquire(blocking=max_age == 0):
            return depth
        try:
            if self._probe is None:
                # One connection and channel for this, reused: opening them costs more than the question.
                conn = self.celery.connection_for_read()
                self._probe = (conn, conn.default_channel)
            try:
                depth = self._probe[1].queue_declare(self.settings.iris_queue, passive=True).message_count
            except ChannelError:
                self._close_probe()  # AMQP closes a channel that asked about a missing queue
                depth = 0  # no worker has declared the queue yet: nothing is waiting in it
            self._depth = (time.monotonic(), depth)
            return depth
        except Exception:
            self._close_probe()
            raise
        finally:
            self._depth_lock.release()

    def _close_probe(self) -> None:
        """Drop the queue-depth connection, so the next reading opens a fresh one."""
        kept, self._probe = self._probe, None
        _release(kept)

    def _admit(self) -> None:
        """Refuse new work while the queue is full or the broker is down: a 503 loses nothing."""
        if self.circuit.is_open():
            raise unavailable()
        try:
            depth = self.queue_depth()
        except Exception as exc:
            log.warning("broker unreachable: %s", exc)
            raise self._down() from None
        if depth >= self.settings.queue_max_length:
            raise ApiError(503, "QueueFull", f"the queue holds {depth} tasks; try again shortly",
                           headers={"Retry-After": "1"})

    def remember(self, task_id: str, ttl: int | None = None) -> None:
        """Record an id this service issued, for as long as its result is kept."""
        self.results.set(f"{self.settings.key_prefix}task:{task_id}", b"1",
                         ex=ttl or self.settings.result_expires_seconds)

    def classify(self, row: list[float]) -> tuple[str, dict[str, Any]]:
        """Classify one row through the edge batcher and wait up to SYNC_TIMEOUT_SECONDS."""
        self._admit()
        pending = self.batcher.submit(row, current_request_id())
        set_task_id(pending.task_id)
        if not pending.wait(self.settings.sync_timeout_seconds):
            self.batcher.forget(pending)
            # The reply may have been missed while the listener reconnected: the backend has the truth.
            meta = self._meta(pending.task_id)
            if meta.get("status") == states.SUCCESS:
                return pending.task_id, meta["result"]
            self._remember_or_unavailable(pending.task_id, self.settings.row_result_expires_seconds)
            raise TimedOut(pending.task_id)
        if pending.error is not None:
            if pending.error.get("raised") == "QueueUnavailable":
                raise unavailable()
            raise ApiError(500, "TaskFailed", "the worker could not classify this request",
                           data={"task_id": pending.task_id})
        return pending.task_id, pending.result

    def classify_async(self, payload: dict[str, Any]) -> str:
        """Queue one classification as its own task and return its id at once."""
        self._admit()
        task_id = str(uuid.uuid4())
        set_task_id(task_id)
        try:
            self.remember(task_id)
            self.celery.send_task(tasks.CLASSIFY, args=[payload], task_id=task_id,
                                  queue=self.settings.iris_queue, headers=_request_header())
        except Exception as exc:
            log.warning("cannot enqueue %s: %s", task_id, exc)
            raise self._down() from None
        return task_id

    def classify_batch(self, payloads: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        """Classify many rows in one task and wait for the list of answers."""
        self._admit()
        task_id = str(uuid.uuid4())
        set_task_id(task_id)
        try:
            self.celery.send_task(tasks.CLASSIFY_BATCH, args=[payloads], task_id=task_id,
                                  queue=self.settings.iris_queue, headers=_request_header())
        except Exception as exc:
            log.warning("cannot enqueue batch %s: %s", task_id, exc)
            raise self._down() from None
        try:
            meta = self._wait_for_result(task_id, self.settings.sync_timeout_seconds)
        except REDIS_DOWN:
            raise self._down() from None
        if meta is None:
            # The work stays queued and can be polled.
            self._remember_or_unavailable(task_id)
            raise TimedOut(task_id)
        if meta["status"] != states.SUCCESS:
            raise ApiError(500, "TaskFailed", "the worker could not classify this batch",
                           data={"task_id": task_id})
        return task_id, meta["result"]

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
            meta = self.celery.backend.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.05)

    def _remember_or_unavailable(self, task_id: str, ttl: int | None = None) -> None:
        """Record a timed-out id so its poll URL answers; if Redis is gone, the client learns why."""
        try:
            self.remember(task_id, ttl)
        except redis.RedisError:
            raise self._down() from None

    # -- polling --------------------------------------------------------------------------------

    def _meta(self, task_id: str) -> dict[str, Any]:
        """Read a task's stored meta (PENDING when nothing is stored)."""
        try:
            return self.celery.backend.get_task_meta(task_id)
        except Exception:
            return {"status": states.PENDING, "result": None}

    def status(self, task_id: str) -> dict[str, Any] | None:
        """Return a task's state, or None for an id this service never issued; 503 while Redis is down."""
        if self.circuit.is_open():
            raise unavailable()
        result = AsyncResult(task_id, app=self.celery)
        try:
            state = result.state
            if state == states.PENDING and not self.results.exists(f"{self.settings.key_prefix}task:{task_id}"):
                return None
        except REDIS_DOWN as exc:
            log.warning("cannot read task %s: %s", task_id, exc)
            raise self._down() from None
        body: dict[str, Any] = {"task_id": task_id, "status": state, "result": None, "error": None}
        if state == states.SUCCESS:
            body["result"] = result.result
        elif state in states.PROPAGATE_STATES:
            failure = result.result
            body["error"] = {"raised": type(failure).__name__, "message": str(failure)}
        return body

    # -- health ---------------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """Check Redis and that at least one worker with a loaded model answers; raise a 503 if not."""
        if self.circuit.is_open():
            raise not_ready("QueueUnavailable", "Redis does not answer")
        try:
            self.results.ping()
            self.queue_depth(max_age=0)
        except Exception as exc:
            log.warning("readiness: Redis unreachable: %s", exc)
            self.circuit.trip()
            raise not_ready("QueueUnavailable", "Redis does not answer") from None
        workers = self.worker_check.workers()
        if not workers:
            raise not_ready("NoWorkers", "no worker with a loaded model answered")
        return {"status": "ready", "workers": workers, "queue_depth": self._depth[1]}


def _request_header() -> dict[str, str] | None:
    """Return the Celery message headers naming this request, so the worker's log lines carry its id."""
    request_id = current_request_id()
    return {"request_id": request_id} if request_id is not None else None


def get_queue() -> IrisQueue:
    """Return the current app's queue extension."""
    return current_app.extensions["iris_queue"]
