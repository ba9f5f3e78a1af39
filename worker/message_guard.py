"""Drop malformed queue messages before any task code runs: one log line, one count by reason, an acknowledgement.

Anyone who can write to Redis can LPUSH anything onto the worker's queues. A payload that was not a kombu message,
headers of the wrong type or a body of the wrong shape used to raise in the consumer's thread, outside anything
Celery catches, and the worker exited ("Unrecoverable error"): one LPUSH per restart kept every worker down. Three
layers now refuse such messages, each at the first point that can tell, and all report to one :class:`Desk`:

- the Redis transport (shared/transport/brpop.py): payloads kombu cannot turn into a message, on the task
  queues and on remote control's broadcast channel, and payloads over ``max_message_bytes`` (set here from
  BATCH_MAX_ROWS), refused before they are decoded;
- the consumer (:class:`Consumer`, Celery's ``worker_consumer``): messages Celery cannot route (no task name, an
  unknown one, a content type it refuses, an ETA that does not parse), which Celery logged with their body;
- the strategy guard (:func:`guard`), wrapped around every task's Strategy, Celery's or the lean one
  (worker/fastpaths/strategy.py): the headers, the body's size before decoding and its shape after, and for
  the API's internal tasks the rows, task ids and reply channel their code takes on trust.

The desk logs one JSON line per message (the reason, a short detail of ours, the task name and id; never the
body), counts it (``iris_rejected_messages_total{reason}``, worker/metrics.py), sends Celery's ``task_rejected``
(the watchdog takes it as proof the consumer consumes), and stores a FAILURE under a public task's id, so that
its caller's wait or poll ends. The message is acknowledged: nothing brings it back. What passes costs a few
type checks (docs/security.md, "What the guards cost"); the body is decoded once, as the strategy would decode
it anyway. Written against Celery 5.7.0: tests/unit/worker/test_message_guard.py pins the consumer hooks
overridden here and ``update_strategies``, where each strategy is wrapped.
"""

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain
from math import isfinite
from typing import Any

from celery import Celery, Task, signals, states
from celery.exceptions import InvalidTaskError, NotRegistered
from celery.utils.time import maybe_iso8601
from celery.worker.consumer import consumer as celery_consumer
from kombu.exceptions import ContentDisallowed, DecodeError, KombuError

from shared import tasks as names
from shared.errors import PayloadValidationError
from shared.redact import redact
from shared.settings import Settings
from shared.transport import brpop as transport
from shared.transport import client_per_pool, no_ack
from worker.fastpaths import strategy as fast_strategy

log = logging.getLogger(__name__)

NOT_JSON = transport.NOT_JSON
NOT_A_MESSAGE = transport.NOT_A_MESSAGE
BAD_HEADERS = transport.BAD_HEADERS
BAD_CONTENT = transport.BAD_CONTENT
TOO_LARGE = transport.TOO_LARGE
BAD_BODY = "bad_body"
BAD_ROWS = "bad_rows"
UNKNOWN_TASK = "unknown_task"
BAD_MESSAGE = "bad_message"

# The labels of iris_rejected_messages_total, and what each covers.
REASONS: dict[str, str] = {
    NOT_JSON: "the payload popped from the queue is not JSON",
    NOT_A_MESSAGE: "JSON, but not a kombu message: not an object, no properties with a delivery tag and delivery "
                   "info, a body, content type or encoding that is not a string, or a body that does not decode as "
                   "its body_encoding says (bad base64, an unknown encoding)",
    BAD_HEADERS: "headers that are not an object, or lack a task name or a task id (a string of at most 255 "
                 "characters), or carry a header of the wrong type (timelimit not [hard, soft]; eta or expires not "
                 "an ISO 8601 time; shadow, root_id, parent_id, group, request_id, traceparent or result_marks not "
                 "a string; result_hold not a number of seconds)",
    BAD_CONTENT: "a content type other than JSON (pickle, YAML, ...), an encoding other than UTF-8, or a "
                 "compressed body",
    TOO_LARGE: "a payload or body larger than BATCH_MAX_ROWS rows can take, with slack; refused before decoding",
    BAD_BODY: "a body that is not JSON or not [args, kwargs, embed] (args a list, kwargs an object, embed an "
              "object or null), or internal-task arguments of the wrong shape: task ids that are not strings, a "
              "reply channel that is not a string, as many rows as task ids, positional arguments only",
    BAD_ROWS: "an internal task's rows that are not lists of 4 finite numbers",
    UNKNOWN_TASK: "a task name this worker does not have (or one that is not a string)",
    BAD_MESSAGE: "a message that passed the checks above but that Celery's own strategy raised on (a header or "
                 "property of a shape Celery reads its own way, such as stamped_headers); logged with the "
                 "exception's type: a case the checks should learn",
}

PUBLIC_TASKS = frozenset({names.CLASSIFY, names.CLASSIFY_BATCH})  # the tasks whose callers read a result
MAX_ID = 255  # characters of a task id: Celery's are 36
# A row of four measurements is at most ~170 bytes of JSON as an object ({"sepal_length": ...}) and ~100 as a list;
# the cap allows three times that, plus room for the rest of the message.
BYTES_PER_ROW = 512
SLACK_BYTES = 64 * 1024

_UTF8 = frozenset({"utf-8", "utf8"})
_TIMES = ("eta", "expires")
_OPTIONAL_STRINGS = ("shadow", "root_id", "parent_id", "group", "request_id", "traceparent", names.RESULT_MARKS_HEADER)
_NUMBERS = frozenset({float, int})
_LIST = {list}
_FOUR = {4}
# What decoding a body can raise: kombu wraps its decoders' errors in DecodeError, refuses a content type with
# ContentDisallowed, and re-raises what building the message raised (a UnicodeEncodeError, say).
_UNDECODABLE = (KombuError, ValueError, TypeError)
_CELERY_REFUSES = (InvalidTaskError, ContentDisallowed, DecodeError)  # create_task_handler sends these to hooks

Problem = tuple[str, str]  # (reason, detail)


@dataclass(frozen=True)
class Limits:
    """How many rows a message may hold, and how many bytes its body and its whole payload may take."""

    public_rows: int  # iris.classify_batch: BATCH_MAX_ROWS
    internal_rows: int  # iris.classify_rows / iris.classify_table: max(BATCH_MAX_ROWS, BATCH_MAX_SIZE)
    body_bytes: int  # the decoded-from-base64, not yet decoded-from-JSON body
    message_bytes: int  # the payload as popped from Redis: the body in base64 (4/3), or escaped as a string (<2x)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        internal = max(settings.batch_max_rows, settings.batch_max_size)
        body = internal * BYTES_PER_ROW + SLACK_BYTES
        return cls(settings.batch_max_rows, internal, body, 2 * body + SLACK_BYTES)


class Desk:
    """Where every refused message is logged, counted, answered when public, and told to the watchdog."""

    def __init__(self, app: Celery, limits: Limits, fast: bool = True) -> None:
        self.app = app
        self.limits = limits
        self.fast = fast  # FAST_PATHS: decode with orjson (worker/fastpaths/strategy.py)
        self.counts: Counter[str] = Counter(dict.fromkeys(REASONS, 0))

    def reject(self, reason: str, detail: str, headers: Any = None, queue: str | None = None, message: Any = None,
               failure: BaseException | None = None) -> None:
        """Log, count and report one refused message; store ``failure`` (or, for a public task, a
        PayloadValidationError) under its task id. The caller acknowledges the message."""
        self.counts[reason] += 1
        task_id, name = _identity(headers)
        fields: dict[str, Any] = {"reason": reason}
        if name is not None:
            fields["task"] = name[:100]
        if task_id is not None:
            fields["task_id"] = task_id
        if queue is not None:
            fields["queue"] = str(queue)[:200]
        log.warning("dropped a malformed message: %s: %s", reason, redact(detail), extra=fields)
        if failure is None and name in PUBLIC_TASKS:
            failure = PayloadValidationError(f"the message was refused ({reason}): {detail}")
        if failure is not None and task_id is not None and not (type(headers) is dict and headers.get("ignore_result")):
            self._store_failure(task_id, failure)
        signals.task_rejected.send(sender=self, message=message, exc=None)

    def dropped(self, reason: str, detail: str, headers: Mapping[str, Any] | None, queue: str) -> None:
        """Hear of a payload the Redis transport dropped (shared.transport.brpop.listen)."""
        if reason == TOO_LARGE and headers is not None and headers.get("task") == names.CLASSIFY_BATCH:
            detail = f"{detail}; {names.CLASSIFY_BATCH} takes at most {self.limits.public_rows} rows"
        self.reject(reason, detail, headers, queue)

    def _store_failure(self, task_id: str, failure: BaseException) -> None:
        try:
            # A stored SUCCESS is kept (Celery's _store_result): a refusal never overwrites an answer.
            self.app.backend.store_result(task_id, failure, states.FAILURE)
        except Exception as exc:  # broad: Celery first reads and decodes what the backend holds under this id, which
            # whoever wrote the message can write too, through decompressors, codecs and exception rebuilding that
            # each raise their own types (zlib.error, SecurityError, ...); the message is dropped all the same and
            # the consumer must go on.
            log.warning("could not store the refusal of task %s: %s", task_id, redact(str(exc)))


def _identity(headers: Any) -> tuple[str | None, str | None]:
    """Return (task id, task name) from ``headers`` when they are strings, the id at most MAX_ID characters."""
    if type(headers) is not dict:
        return None, None
    task_id, name = headers.get("id"), headers.get("task")
    return (task_id if type(task_id) is str and 0 < len(task_id) <= MAX_ID else None,
            name if type(name) is str else None)


def header_problem(headers: Any) -> Problem | None:
    """Return what is wrong with a task message's headers, or None."""
    if type(headers) is not dict:
        return BAD_HEADERS, "the headers are not an object"
    task_id = headers.get("id")
    if type(task_id) is not str or not 0 < len(task_id) <= MAX_ID:
        return BAD_HEADERS, "no task id (a string of at most 255 characters)"
    if type(headers.get("task")) is not str:
        return BAD_HEADERS, "no task name"
    limit = headers.get("timelimit")
    # Celery unpacks it as (hard, soft) on the consumer's thread.
    if limit is not None and (type(limit) is not list or len(limit) != 2
                              or not all(v is None or type(v) in _NUMBERS for v in limit)):
        return BAD_HEADERS, "timelimit is not [hard, soft]"
    for key in _OPTIONAL_STRINGS:
        value = headers.get(key)
        if value is not None and type(value) is not str:
            return BAD_HEADERS, f"{key} is not a string"
    hold = headers.get(names.RESULT_HOLD_HEADER)
    if hold is not None and (type(hold) is not int or hold < 0):
        return BAD_HEADERS, f"{names.RESULT_HOLD_HEADER} is not a number of seconds"
    for key in _TIMES:  # Celery's strategy refuses one that does not parse; the lean one would ignore it
        value = headers.get(key)
        if value is not None and (type(value) is not str or not _is_iso8601(value)):
            return BAD_HEADERS, f"{key} is not an ISO 8601 time"
    return None


def _is_iso8601(value: str) -> bool:
    """Return whether Celery's strategy would parse ``value`` as a time (it raises InvalidTaskError otherwise)."""
    try:
        maybe_iso8601(value)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return False
    return True


def body_problem(payload: Any) -> Problem | None:
    """Return what is wrong with a decoded protocol-2 body, ``[args, kwargs, embed]``, or None."""
    if type(payload) is not list or len(payload) != 3:
        return BAD_BODY, "the body is not [args, kwargs, embed]"
    args, kwargs, embed = payload
    if type(args) is not list:
        return BAD_BODY, "args is not a list"
    if type(kwargs) is not dict:
        return BAD_BODY, "kwargs is not an object"
    if embed is not None and type(embed) is not dict:
        return BAD_BODY, "embed is not an object"
    return None


def rows_problem(rows: list[Any]) -> Problem | None:
    """Return what is wrong with rows that must be lists of 4 finite numbers, or None (checked in C loops)."""
    if not rows:
        return BAD_BODY, "no rows"
    if set(map(type, rows)) != _LIST or set(map(len, rows)) != _FOUR:
        return BAD_ROWS, "a row is not a list of 4 numbers"
    if not set(map(type, chain.from_iterable(rows))) <= _NUMBERS:  # bool, str and null are not measurements
        return BAD_ROWS, "a row holds something other than numbers"
    try:
        # NaN and infinities make the sum NaN or infinite, and so do finite values that overflow it: none is a
        # flower's measurement.
        finite = isfinite(sum(chain.from_iterable(rows)))
    except OverflowError:  # an integer past float's range
        finite = False
    return None if finite else (BAD_ROWS, "a row holds a number that is not finite")


def _ids_problem(task_ids: Any) -> Problem | None:
    if type(task_ids) is not list or not all(type(t) is str and 0 < len(t) <= MAX_ID for t in task_ids):
        return BAD_BODY, "the task ids are not a list of strings"
    return None


def _internal_problem(args: list[Any], kwargs: dict[str, Any], signature: str,
                      ids_problem: Callable[[Any], Problem | None]) -> Problem | None:
    """Check the ``(rows, ids, reply_to=None)`` arguments both internal tasks take, ``ids`` by ``ids_problem``."""
    if kwargs or not 2 <= len(args) <= 3:
        return BAD_BODY, f"{signature} as positional arguments"
    if type(args[0]) is not list:
        return BAD_BODY, "rows is not a list"
    if (problem := ids_problem(args[1])) is not None:
        return problem
    if len(args) == 3 and args[2] is not None and type(args[2]) is not str:
        return BAD_BODY, "reply_to is not a string"
    return None


def _task_id_problem(task_id: Any) -> Problem | None:
    if type(task_id) is not str or not 0 < len(task_id) <= MAX_ID:
        return BAD_BODY, "the task id is not a string"
    return None


def classify_rows_problem(args: list[Any], kwargs: dict[str, Any], limits: Limits) -> Problem | None:
    """Check ``iris.classify_rows(rows, task_ids, reply_to=None)``'s arguments, which its code takes on trust."""
    problem = _internal_problem(args, kwargs, "classify_rows takes (rows, task_ids, reply_to)", _ids_problem)
    if problem is not None:
        return problem
    rows, task_ids = args[0], args[1]
    if len(rows) != len(task_ids):
        return BAD_BODY, f"{len(rows)} rows for {len(task_ids)} task ids"
    # More rows than allowed: the task refuses them by count, with a FAILURE on the reply channel.
    return rows_problem(rows) if len(rows) <= limits.internal_rows else None


def classify_table_problem(args: list[Any], kwargs: dict[str, Any], limits: Limits) -> Problem | None:
    """Check ``iris.classify_table(rows, task_id, reply_to=None)``'s arguments, which its code takes on trust."""
    problem = _internal_problem(args, kwargs, "classify_table takes (rows, task_id, reply_to)", _task_id_problem)
    if problem is not None:
        return problem
    rows = args[0]
    return rows_problem(rows) if len(rows) <= limits.internal_rows else None


ArgumentCheck = Callable[[list[Any], dict[str, Any], Limits], Problem | None]
ARGUMENT_CHECKS: dict[str, ArgumentCheck] = {names.CLASSIFY_ROWS: classify_rows_problem,
                                             names.CLASSIFY_TABLE: classify_table_problem}


def _decode_documented(message: Any) -> Any:
    return message.decode()


def guard(strategy: Callable[..., Any], task: Task, desk: Desk, consumer: Any) -> Callable[..., Any]:
    """Return ``strategy`` (a task's message handler) behind the checks; a refused message is acknowledged."""
    check_arguments = ARGUMENT_CHECKS.get(task.name)
    limits = desk.limits
    max_body = limits.body_bytes
    decode = fast_strategy.decode if desk.fast else _decode_documented
    connection_errors = consumer.connection_errors
    # Left to Celery: broker errors (it reconnects), and what its consumer refuses itself (to the hooks below).
    passed_on = (*connection_errors, *getattr(consumer, "channel_errors", ()), *_CELERY_REFUSES, MemoryError)

    def problem_of(message: Any) -> Problem | None:
        problem = header_problem(message.headers)
        if problem is not None:
            return problem
        if message.content_type != "application/json" or message.content_encoding not in _UTF8:
            return BAD_CONTENT, "the body is not UTF-8 JSON"
        body = message.body
        if not body:
            return BAD_BODY, "no body"
        if len(body) > max_body:  # before decoding: a huge body would cost its size several times over
            detail = f"a body of {len(body)} bytes, over the {max_body}-byte limit"
            if task.name == names.CLASSIFY_BATCH:
                detail = f"{detail}; {task.name} takes at most {limits.public_rows} rows"
            return TOO_LARGE, detail
        try:
            payload = decode(message)  # cached on the message: the strategy reads it again for free
        except _UNDECODABLE:
            return BAD_BODY, "the body does not decode as JSON"
        problem = body_problem(payload)
        if problem is None and check_arguments is not None:
            problem = check_arguments(payload[0], payload[1], limits)
        return problem

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        problem = problem_of(message)
        settled = False
        if problem is None:
            def settle_ack(*args: Any, **kw: Any) -> Any:
                nonlocal settled
                settled = True
                return ack(*args, **kw)

            def settle_reject(*args: Any, **kw: Any) -> Any:
                nonlocal settled
                settled = True
                return reject(*args, **kw)

            try:
                return strategy(message, body, settle_ack, settle_reject, callbacks, **kwargs)
            except passed_on:
                raise
            except Exception as exc:  # broad: Celery's strategy reads headers and properties in ways of its own,
                # and whatever it raises here would stop the consumer; the checks above name the known cases.
                problem = BAD_MESSAGE, f"Celery's strategy raised {type(exc).__name__}"
        desk.reject(*problem, message.headers, (message.delivery_info or {}).get("routing_key"), message)
        if not settled:  # a second acknowledgement would raise in the consumer's loop
            ack(log, connection_errors)
        return None

    return handle


class _Strategies(dict[str, Any]):
    """The consumer's task name -> strategy table, where a name that is not a string is unknown, not unhashable."""

    def __getitem__(self, name: Any) -> Any:
        # Celery looks the message's "task" header up here and refuses a KeyError as an unknown task; a list or
        # an object would raise TypeError, in the consumer's thread.
        if type(name) is not str:
            raise KeyError("the task name is not a string")
        return super().__getitem__(name)


class Consumer(celery_consumer.Consumer):
    """Celery's consumer, every task's Strategy guarded, and the messages it cannot route sent to the desk."""

    Strategies = _Strategies

    def update_strategies(self) -> None:
        """Build each task's strategy as Celery does, then put it behind :func:`guard` (on every consumer start)."""
        super().update_strategies()
        desk = _desk
        if desk is None:
            return
        for name, strategy in self.strategies.items():
            self.strategies[name] = guard(strategy, self.app.tasks[name], desk, self)

    def _refuse(self, reason: str, detail: str, message: Any, failure: BaseException | None = None) -> None:
        headers = message.headers
        queue = (message.delivery_info or {}).get("routing_key")
        if _desk is not None:
            _desk.reject(reason, detail, headers, queue, message, failure)
        else:
            log.warning("dropped a malformed message: %s: %s", reason, detail, extra={"reason": reason})

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """Refuse a message with no task name (Celery logged its body), and reject it."""
        self._refuse(BAD_HEADERS, "no task name in its headers", message)
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """Refuse a task this worker does not have, and store NotRegistered under its id as Celery does."""
        task_id, name = _identity(message.headers)
        self._refuse(UNKNOWN_TASK, "no task of that name on this worker", message,
                     NotRegistered(name[:100]) if name is not None else None)
        message.reject_log_error(log, self.connection_errors)
        signals.task_unknown.send(sender=self, message=message, exc=exc, name=name, id=task_id)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """Refuse a message Celery's strategy found invalid: a refused content type, or an ETA that does not parse."""
        if isinstance(exc, ContentDisallowed):
            self._refuse(BAD_CONTENT, "a content type this worker does not accept", message)
        else:
            self._refuse(BAD_HEADERS, f"Celery refused it: {type(exc).__name__}", message)
        message.reject_log_error(log, self.connection_errors)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Refuse a message whose body does not decode (Celery logged it, body and all), and acknowledge it."""
        self._refuse(BAD_BODY, "the body does not decode", message)
        message.ack_log_error(log, self.connection_errors)


_desk: Desk | None = None


def install(app: Celery, settings: Settings) -> Desk:
    """Guard this worker's messages: its consumer and strategies, and the Redis transport's payloads."""
    global _desk
    limits = Limits.from_settings(settings)
    desk = _desk = Desk(app, limits, settings.fast_paths)
    app.conf.worker_consumer = f"{__name__}:Consumer"
    if app.conf.broker_transport in _GUARDED_TRANSPORTS:
        app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}),
                                             "max_message_bytes": limits.message_bytes}
    transport.listen(desk.dropped)
    return desk


# shared.celery_app's Redis transports: each one's channel is shared.transport.brpop's.
_GUARDED_TRANSPORTS = frozenset({transport.TRANSPORT, client_per_pool.TRANSPORT,
                                 no_ack.TRANSPORT})
