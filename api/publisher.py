"""Publish edge batches and batch requests as internal task messages on one kept connection per API process."""

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu import Queue
from kombu.transport import virtual

from api import ids
from api.bypass_celery_send_task_message import EdgeMessages
from api.circuit import Circuit
from shared import tasks


class EdgePublisher:
    """The batcher's ``publish`` (one ``iris.classify_rows`` message per batch) and the batch endpoints'
    ``table`` (one ``iris.classify_table`` message per request), both answered on this process's reply channel.

    The connection and channel are kept, not taken from a pool per message: opening them costs more than the
    publish. Request threads, the reply listener and the flusher all publish, so one lock serialises them:
    kombu channels are not thread-safe. ``request_ids`` (aligned with ``task_ids``) travels as a header that
    older workers ignore.
    """

    def __init__(self, celery: Celery, queue: Queue, reply_to: Callable[[], str], circuit: Circuit,
                 fast: bool, hold_seconds: int | None = None, marks: str | None = None) -> None:
        self._celery = celery
        self._queue = queue
        self._reply_to = reply_to
        self._circuit = circuit
        # Tell the worker to keep each result only while its request may wait, unless the API marked it (504).
        self._result_headers = ({tasks.RESULT_HOLD_HEADER: hold_seconds, tasks.RESULT_MARKS_HEADER: marks}
                                if hold_seconds is not None and marks is not None else {})
        # FAST_PATHS: kombu's virtual transports (Redis among them) take the message built by
        # api/bypass_celery_send_task_message.py; other brokers, and FAST_PATHS=0, Celery's send_task_message.
        self._messages = ({name: EdgeMessages(celery, name, queue.name)
                           for name in (tasks.CLASSIFY_ROWS, tasks.CLASSIFY_TABLE)} if fast else {})
        self._lock = threading.Lock()
        self._kept: tuple[Any, Any, Any] | None = None  # (connection, channel, producer)

    def __call__(self, rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        """Send one edge batch; raise when the broker is unreachable (the batcher fails its rows)."""
        self._send(tasks.CLASSIFY_ROWS, [rows, task_ids, self._reply_to()], len(rows),
                   {"request_ids": request_ids, **self._result_headers})

    def table(self, rows: list[list[float]], task_id: str, request_id: str | None) -> None:
        """Send one batch request's rows as a task answered under ``task_id``; raise when the broker is unreachable."""
        headers = {"request_id": request_id} if request_id is not None else {}
        self._send(tasks.CLASSIFY_TABLE, [rows, task_id, self._reply_to()], len(rows),
                   {**headers, **self._result_headers})

    def _send(self, name: str, args: list[Any], rows: int, headers: dict[str, Any]) -> None:
        """Put one ``name`` task message on the queue, retrying once on a fresh connection."""
        if self._circuit.is_open():
            raise redis.ConnectionError("Redis failed within the last second")
        # argsrepr: Celery would otherwise repr() every row into the headers. ignore_result: the answers go to
        # reply_to and each row's own id, never to this message's id.
        argsrepr = f"({rows} rows)"
        messages = self._messages.get(name)
        with self._lock:
            for attempt in (1, 2):  # a kept connection may have gone stale: retry once on a fresh one
                try:
                    _, channel, producer = self._connection()
                    if messages is not None and isinstance(channel, virtual.Channel):
                        messages.put(channel, args, argsrepr, headers)
                    else:
                        message = self._celery.amqp.as_task_v2(ids.uuid4(), name, args=args,
                                                               argsrepr=argsrepr, ignore_result=True)
                        self._celery.amqp.send_task_message(producer, name, message, queue=self._queue,
                                                            headers=headers, retry=False)
                    return
                except Exception as exc:
                    self.close()
                    # A hung Redis times out again on a fresh connection: only a dropped one is worth a retry.
                    if attempt == 2 or isinstance(exc, redis.TimeoutError):
                        self._circuit.trip()
                        raise

    def _connection(self) -> tuple[Any, Any, Any]:
        """Return the kept (connection, channel, producer), connecting and declaring the queue once."""
        if self._kept is None:
            conn = self._celery.connection_for_write()
            try:
                channel = conn.default_channel  # connects under the transport options: no retry, no sleep
                # On AMQP a message for an undeclared queue is dropped; on Redis this is a cheap no-op.
                self._queue.bind(channel).declare()
            except Exception:
                conn.release()
                raise
            self._kept = (conn, channel, self._celery.amqp.Producer(channel, auto_declare=False))
        return self._kept

    def close(self) -> None:
        """Drop the kept connection, so the next batch opens a fresh one; one that already died is fine."""
        kept, self._kept = self._kept, None
        if kept is not None:
            with contextlib.suppress(Exception):
                kept[0].release()
