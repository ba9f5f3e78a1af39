"""Publish edge batches as ``iris.classify_rows`` task messages on a connection the flusher thread keeps."""

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from api import bypass_celery_send_task_message
from api.circuit import Circuit
from shared import tasks


class EdgePublisher:
    """The batcher's ``publish``: one task message per batch, replies to this process's channel.

    The connection and channel are kept, not taken from a pool per batch: opening them costs more than the
    publish. ``request_ids`` (aligned with ``task_ids``) travels as a header that older workers ignore.
    """

    def __init__(self, celery: Celery, queue: str, reply_to: Callable[[], str], circuit: Circuit,
                 fast: bool) -> None:
        self._celery = celery
        self._queue = queue
        self._reply_to = reply_to
        self._circuit = circuit
        self._fast = fast
        self._kept: tuple[Any, Any, Any] | None = None  # (connection, channel, producer)

    def __call__(self, rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        """Send one batch; raise when the broker is unreachable (the batcher fails its rows)."""
        if self._circuit.is_open():
            raise redis.ConnectionError("Redis failed within the last second")
        for attempt in (1, 2):  # a kept connection may have gone stale: retry once on a fresh one
            message = self._celery.amqp.as_task_v2(
                str(uuid.uuid4()), tasks.CLASSIFY_ROWS, args=[rows, task_ids, self._reply_to()],
                # argsrepr: Celery would otherwise repr() every row into the headers. ignore_result: the
                # answers go to reply_to and each row's own id, never to this message's id.
                argsrepr=f"({len(rows)} rows)", ignore_result=True)
            headers = {"request_ids": request_ids}
            try:
                _, channel, producer = self._connection()
                if self._fast:
                    bypass_celery_send_task_message.basic_publish(channel, tasks.CLASSIFY_ROWS, message,
                                                                  self._queue, headers)
                else:
                    self._celery.amqp.send_task_message(producer, tasks.CLASSIFY_ROWS, message, queue=self._queue,
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
                self._celery.amqp.queues[self._queue].bind(channel).declare()
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
