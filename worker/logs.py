"""The worker's JSON log lines: each names its task id and the id of the API request that queued it.

Installed through Celery's logging signals, so Celery's own handlers (stderr or ``--logfile``) keep their
destination and only change format. At INFO or lower the worker also logs one line per iris task, naming
the request and task ids; at the default WARNING it adds nothing to the hot path.
"""

import logging
from typing import Any

from celery import Task, signals
from celery._state import get_current_task

from shared import tasks as names
from shared.logs import json_formatter

log = logging.getLogger(__name__)

LOGGED_TASKS = frozenset({names.CLASSIFY, names.CLASSIFY_BATCH, names.CLASSIFY_ROWS, names.CLASSIFY_TABLE})


class TaskContextFilter(logging.Filter):
    """Add the running task's id, and the request id from its message headers, to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        if task is not None:
            request = task.request
            fields = record.__dict__
            if request.id is not None:
                fields.setdefault("task_id", request.id)
            request_id = getattr(request, "request_id", None)  # header set by the API; absent from other clients
            if request_id is not None:
                fields.setdefault("request_id", request_id)
        return True


def _level(loglevel: Any) -> int:
    """Return Celery's log level (an int, or a name such as "INFO") as an int."""
    if isinstance(loglevel, int):
        return loglevel
    level = logging.getLevelName(str(loglevel).upper())
    return level if isinstance(level, int) else logging.WARNING


def _use_json(logger: logging.Logger, loglevel: Any = None, **_: Any) -> None:
    """Give the handlers Celery just set up the JSON formatter and the task context."""
    for handler in logger.handlers:
        handler.setFormatter(json_formatter())
        if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
            handler.addFilter(TaskContextFilter())
    if _level(loglevel if loglevel is not None else logger.level) <= logging.INFO:
        # Connected before the consumer starts, which is when Celery reads a task's signal receivers.
        signals.task_postrun.connect(log_task, weak=False, dispatch_uid="iris-log-task")


def log_task(task: Task, args: tuple[Any, ...] | list[Any] | None = None, state: str | None = None,
             **_: Any) -> None:
    """Log one line per iris task: an edge batch names every row's task id and request id."""
    if task.name not in LOGGED_TASKS:
        return
    if task.name == names.CLASSIFY_ROWS:
        task_ids = list(args[1]) if args and len(args) > 1 else []
        log.info("%s %s: %d rows", task.name, state, len(task_ids),
                 extra={"task_ids": task_ids, "request_ids": getattr(task.request, "request_ids", None)})
    else:
        log.info("%s %s", task.name, state)


def install() -> None:
    """Make the worker's log lines JSON (call before the worker sets up logging, e.g. in the app factory)."""
    signals.after_setup_logger.connect(_use_json, weak=False, dispatch_uid="iris-json-logs")
    signals.after_setup_task_logger.connect(_use_json, weak=False, dispatch_uid="iris-json-task-logs")
