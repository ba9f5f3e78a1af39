"""Run the internal tasks (``iris.classify_rows``, ``iris.classify_table``) past Celery's default task strategy.

Written against Celery 5.7.0. A task's ``Strategy`` (a documented ``Task`` attribute) is what Celery's consumer
calls with each of its messages. The default one (``celery.worker.strategy.default``) builds a ``Request``, checks
revocation, ETA and rate limits, records the request as reserved and active in ``celery.worker.state``, sends
``task_received`` and task events, hands the request to the pool, and runs the task through the tracer
(``celery.app.trace.build_tracer``: the task stack, result and state bookkeeping, the success and failure
handlers). The API's internal messages need none of that: they are never revoked, delayed, rate limited or
stored under their own id, they come from the rows queue that is consumed without acknowledgements, and the task
stores its own answers. It saves about a fifth of a worker's CPU per one-row edge batch (``load/bench_worker.py``;
docs/design.md, "Fast paths", has the figures).

:func:`lean` decodes the message (:func:`decode`: JSON with orjson; still refusing content types outside
``accept_content``, so never pickle), pushes the task's request context (the message headers, such as
``request_ids`` and ``traceparent``, and its delivery info), sends ``task_prerun`` and ``task_postrun`` only when
something is connected to them (the JSON task log at INFO, tracing), runs the task's function, logs anything it
raises, and acknowledges the message through the promise the consumer gives every strategy. Not done:
``task_received`` is not sent (the watchdog, worker/watchdog.py, sees the consumer alive by ``task_prerun``
instead) and the request is not counted as active in ``celery.worker.state``.

Only with the solo pool, which runs tasks in the consumer's thread as this does; other pools, and FAST_PATHS=0,
keep Celery's strategy. tests/unit/worker/fastpaths/test_strategy.py pins the strategy's call signatures and
checks the task sees what it would see under Celery's.

In the worker every strategy, this one and Celery's, runs behind worker/message_guard.py's guard, which checks the
headers and the body's shape first: this strategy indexes and unpacks them outside any ``try``, and what raises
here raises in the consumer's thread. The guard decodes the body with :func:`decode`, which keeps the result on
the message (kombu's own decode cache, ``Message._decoded_cache``), so neither this strategy nor Celery's (which
reads ``message.payload``) decodes it again.
"""

import logging
from collections.abc import Callable
from typing import Any

import orjson
from celery import Celery, Task, signals
from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker.strategy import default

log = logging.getLogger(__name__)

STRATEGY = f"{__name__}:lean"


def lean(task: Task, app: Celery, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Return the consumer's handler for ``task``'s messages: run it at once in this thread (solo pool only)."""
    if not isinstance(consumer.pool, SoloPool):
        return default(task, app, consumer, **options)
    run = task.run
    hostname = consumer.hostname
    prerun, postrun = signals.task_prerun, signals.task_postrun

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        args, kwargs, _embed = decode(message)
        headers = message.headers
        task_id = headers["id"]
        task.push_request(**{**headers, "args": args, "kwargs": kwargs, "delivery_info": message.delivery_info,
                             "hostname": hostname, "is_eager": False, "called_directly": False})
        state = "SUCCESS"
        try:
            if prerun.receivers:
                prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
            try:
                run(*args, **kwargs)
            except Exception:  # broad: as under Celery's tracer, whatever a task raises ends with its message,
                # logged, and never reaches the consumer's loop; the tasks answer the failures they expect themselves.
                state = "FAILURE"
                log.exception("%s %s raised unexpectedly", task.name, task_id)
            if postrun.receivers:
                postrun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs, retval=None,
                             state=state)
        finally:
            task.pop_request()
            ack(log, consumer.connection_errors)

    return handle


def decode(message: Any) -> Any:
    """Decode a JSON body with orjson, anything else as kombu does (refusing what the worker does not accept), once.

    The API's internal messages are plain JSON: orjson reads them several times faster than kombu's stdlib
    decoder with its object hook. A body naming kombu's ``__type__`` objects (datetimes, UUIDs, bytes), and
    anything orjson refuses (NaN, integers past 64 bits), goes to kombu unchanged. The result is kept where
    kombu keeps its own (``message.payload`` and ``message.decode()`` return it), so a second call is free.
    """
    cached = message._decoded_cache
    if cached:
        return cached
    accepted = message.accept is None or "application/json" in message.accept
    body = message.body
    if (accepted and message.content_type == "application/json" and message.content_encoding in _UTF8
            and isinstance(body, bytes) and b'"__type__"' not in body):
        try:
            decoded = message._decoded_cache = orjson.loads(body)
            return decoded
        except orjson.JSONDecodeError:
            pass
    return message.decode()


_UTF8 = frozenset({"utf-8", "utf8"})
