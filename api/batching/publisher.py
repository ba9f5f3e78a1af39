"""Publish edge batches and batch requests as internal task messages on connections kept per API process."""

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu import Queue
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from api.batching import task_ids
from api.batching.task_messages import EdgeMessages
from api.broker.circuit import DOWN_OR_REFUSED, REDIS_DOWN, Circuit, refused
from api.errors import QueueFull, QueueUnavailable
from shared import tasks


class EdgePublisher:
    """The batcher's ``publish`` (one ``iris.classify_rows`` message per batch) and the batch endpoints'
    ``table`` (one ``iris.classify_table`` message per request), both answered on this process's reply channel.

    The connection and channel are kept, not taken from a pool per message: opening them costs more than the
    publish. Request threads, the reply listener and the flusher all publish, so one lock serialises them:
    kombu channels are not thread-safe. ``request_ids`` (aligned with ``task_ids``) travels as a header that
    older workers ignore.

    With ``lost`` and the fast path on Redis, an edge batch's LPUSH is written without waiting for Redis's
    reply: the next batch reads it before sending its own, or a settler thread within ``SETTLE_SECONDS`` when
    none follows. Waiting for it cost each batch a round trip and a thread's sleep and wake, 3.5% of the CPU
    per request at 8 connections (docs/performance.md). A batch Redis refused, or whose connection broke, is
    sent once more on a fresh connection; if that fails too the circuit trips and ``lost(task_ids, error)``
    fails its rows, as a failed synchronous publish would, only up to ``SETTLE_SECONDS`` later.

    A publish the broker refused (RabbitMQ's basic.nack under publisher confirms: a queue at a bound of its own)
    raises QueueFull at once: the broker answered, so the connection is kept, nothing is sent again and the
    circuit stays closed (api/broker/circuit.py logs the refusal, at most once a second).
    """

    SETTLE_SECONDS = 0.01

    def __init__(self, celery: Celery, queue: Queue, reply_to: Callable[[], str], circuit: Circuit,
                 fast: bool, hold_seconds: int | None = None, marks: str | None = None,
                 lost: Callable[[list[str], Exception], None] | None = None) -> None:
        self._celery = celery
        self._queue = queue
        self._reply_to = reply_to
        self._circuit = circuit
        # Tell the worker to keep each result only while its request may wait, unless the API marked it (504).
        self._result_headers = ({tasks.RESULT_HOLD_HEADER: hold_seconds, tasks.RESULT_MARKS_HEADER: marks}
                                if hold_seconds is not None and marks is not None else {})
        # FAST_PATHS: kombu's virtual transports (Redis among them) take the message built by
        # api/batching/task_messages.py; other brokers, and FAST_PATHS=0, Celery's send_task_message.
        self._messages = ({name: EdgeMessages(celery, name, queue.name)
                           for name in (tasks.CLASSIFY_ROWS, tasks.CLASSIFY_TABLE)} if fast else {})
        self._lock = threading.Lock()
        self._kept: tuple[Any, Any, Any] | None = None  # (connection, channel, producer)
        self._lost = lost
        self._push: tuple[Any, Any] | None = None  # (redis-py pool, its connection kept for unread pushes)
        # The push whose reply is unread: (packed command, its task ids, when it was written).
        self._unread: tuple[Any, list[str], float] | None = None
        self._settler_pid: int | None = None


    def connect(self, lost: Callable[[list[str], Exception], None]) -> None:
        """Report the rows of a batch whose publish failed twice to ``lost`` (the batcher, built after this)."""
        self._lost = lost
    def __call__(self, rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        """Send one edge batch; raise when the broker is unreachable, or QueueFull when it refuses the batch (the
        batcher fails its rows)."""
        self._send(tasks.CLASSIFY_ROWS, [rows, task_ids, self._reply_to()], len(rows),
                   {"request_ids": request_ids, **self._result_headers}, unread=task_ids)

    def table(self, rows: list[list[float]], task_id: str, request_id: str | None) -> None:
        """Send one batch request's rows as a task answered under ``task_id``; raise when the broker is unreachable,
        or QueueFull when it refuses them."""
        headers = {"request_id": request_id} if request_id is not None else {}
        self._send(tasks.CLASSIFY_TABLE, [rows, task_id, self._reply_to()], len(rows),
                   {**headers, **self._result_headers})

    def _send(self, name: str, args: list[Any], rows: int, headers: dict[str, Any],
              unread: list[str] | None = None) -> None:
        """Put one ``name`` task message on the queue, retrying once on a fresh connection; with ``unread`` (the
        batch's task ids), leave Redis's reply to be read later (see the class docstring)."""
        if self._circuit.is_open():
            raise QueueUnavailable()  # the guard passes it on as is: no new failure, so no new trip
        # argsrepr: Celery would otherwise repr() every row into the headers. ignore_result: the answers go to
        # reply_to and each row's own id, never to this message's id.
        argsrepr = f"({rows} rows)"
        messages = self._messages.get(name)
        with self._lock:
            self._settle()  # the previous push's reply first: Redis answers in order
            if self._circuit.is_open():  # it was refused: so would this batch be
                raise QueueUnavailable()  # the guard passes it on as is: no new failure, so no new trip
            for attempt in (1, 2):  # a kept connection may have gone stale: retry once on a fresh one
                try:
                    _, channel, producer = self._connection()
                    if (messages is not None and unread is not None and self._lost is not None
                            and isinstance(channel, kombu_redis.Channel)):
                        packed = messages.push(self._push_connection(channel), args, argsrepr, headers)
                        self._unread = (packed, unread, time.monotonic())
                        self._start_settler()
                    elif messages is not None and isinstance(channel, virtual.Channel):
                        messages.put(channel, args, argsrepr, headers)
                    else:
                        message = self._celery.amqp.as_task_v2(task_ids.uuid4(), name, args=args,
                                                               argsrepr=argsrepr, ignore_result=True)
                        self._celery.amqp.send_task_message(producer, name, message, queue=self._queue,
                                                            headers=headers, retry=False)
                    return
                except DOWN_OR_REFUSED as exc:
                    if refused(exc):  # an answer, not a failure: the connection is sound, and a resend refused too
                        self._circuit.refused(f"publishing {name}")
                        raise QueueFull() from None
                    self.close()
                    self._drop_push()
                    # A hung Redis times out again on a fresh connection: only a dropped one is worth a retry.
                    if attempt == 2 or isinstance(exc, redis.TimeoutError):
                        self._circuit.failed("publishing an edge batch", exc)
                        raise

    def _settle(self) -> None:
        """Read the unread push's reply (the lock held); if Redis refused it or the connection broke, send it once
        more on a fresh connection, and if that fails too trip the circuit and report its rows lost."""
        unread, self._unread = self._unread, None
        if unread is None:
            return
        if self._settler_pid != os.getpid():  # written by the process this one forked from: not ours to read
            self._push = None
            return
        packed, task_ids, _ = unread
        try:
            if self._push is None:
                raise redis.ConnectionError("the connection of an unread push was dropped")
            self._push[1].read_response()
            return
        except REDIS_DOWN as exc:
            self._drop_push()
            failure: Exception = exc
        if not isinstance(failure, redis.TimeoutError):  # as in _send: a hung Redis hangs a fresh connection too
            try:
                connection = self._push_connection(self._connection()[1])
                connection.send_packed_command(packed)
                connection.read_response()
                return
            except REDIS_DOWN as exc:
                self.close()
                self._drop_push()
                failure = exc
        self._circuit.failed("writing an edge batch", failure)
        if self._lost is not None:
            self._lost(task_ids, failure)

    def _push_connection(self, channel: Any) -> Any:
        """Return the redis-py connection kept for pushes, taken from ``channel``'s pool once."""
        pool = channel.pool
        if self._push is None or self._push[0] is not pool:  # kombu replaces the pool after a fork
            self._drop_push()
            self._push = (pool, pool.get_connection())
        return self._push[1]

    def _drop_push(self) -> None:
        """Disconnect the kept push connection (it may hold an unread reply) and hand it back to its pool."""
        push, self._push = self._push, None
        if push is not None:
            with contextlib.suppress(*REDIS_DOWN):
                push[1].disconnect()
                push[0].release(push[1])

    def _start_settler(self) -> None:
        """Start this process's settler thread once (after the server forks, never before)."""
        if self._settler_pid != os.getpid():
            self._settler_pid = os.getpid()
            threading.Thread(target=self._settle_forever, name="iris-push-settler", daemon=True).start()

    def _settle_forever(self) -> None:
        """Read the reply of a push no later batch followed within ``SETTLE_SECONDS``, so a refusal is noticed."""
        while True:
            time.sleep(self.SETTLE_SECONDS)
            unread = self._unread
            if unread is not None and time.monotonic() - unread[2] >= self.SETTLE_SECONDS:
                with self._lock:
                    self._settle()

    def _connection(self) -> tuple[Any, Any, Any]:
        """Return the kept (connection, channel, producer), connecting and declaring the queue once."""
        if self._kept is None:
            conn = self._celery.connection_for_write()
            try:
                channel = conn.default_channel  # connects under the transport options: no retry, no sleep
                # On AMQP a message for an undeclared queue is dropped; on Redis this is a cheap no-op.
                self._queue.bind(channel).declare()
            except REDIS_DOWN:
                conn.release()
                raise
            self._kept = (conn, channel, self._celery.amqp.Producer(channel, auto_declare=False))
        return self._kept

    def close(self) -> None:
        """Drop the kept connection, so the next batch opens a fresh one; one that already died is fine."""
        kept, self._kept = self._kept, None
        if kept is not None:
            with contextlib.suppress(*REDIS_DOWN):
                kept[0].release()
