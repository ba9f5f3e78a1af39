"""JSON log lines for the API and the workers, each naming the request id and the task id it belongs to.

The entry points install this once per process: ``python -m api`` (granian), ``gunicorn.conf.py`` and the
worker (through Celery's logging signals, worker/logs.py). ``create_app`` installs nothing, so tests and
embedding servers keep their own logging.

Every line, its message, exception text and extra fields alike, leaves through :func:`shared.redact.redact`: a
URL's password (a broker's, a result backend's, MLflow's) never reaches a log, whichever library wrote the line.
"""

import logging
import logging.config
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from shared.redact import redact

# [request id, task id] of the request being served on this thread: api/web/request_id.py sets it per request
# (one context variable, not two: it is set and reset on every request), the queue fills in the task id.
LOG_CONTEXT: ContextVar[list[str | None] | None] = ContextVar("log_context", default=None)


def current_request_id() -> str | None:
    """Return the id of the request being served, if any."""
    context = LOG_CONTEXT.get()
    return context[0] if context is not None else None


def set_task_id(task_id: str) -> None:
    """Name the task the current request queued, for its later log lines."""
    context = LOG_CONTEXT.get()
    if context is not None:
        context[1] = task_id


# Every line has these; request_id, task_id and any ``extra=`` fields follow when a record has them.
FIELDS = ("levelname", "name", "message")
RENAMED = {"levelname": "level", "name": "logger"}
ACCESS_LOGGER = "api.access"


class RedactingJsonFormatter(JsonFormatter):
    """One JSON object per line, with the password of every URL in it replaced by ``***``."""

    def format(self, record: logging.LogRecord) -> str:
        # The finished line, not the message: exception text, stack and extra fields are in it too. A line with
        # no "://" costs one substring search.
        return redact(super().format(record))


def json_formatter() -> logging.Formatter:
    """Return the formatter of every log line: one JSON object per line, passwords in URLs redacted."""
    return RedactingJsonFormatter(list(FIELDS), rename_fields=RENAMED, timestamp="time")  # ISO 8601, UTC


class RequestContextFilter(logging.Filter):
    """Add the current request id and task id to each record that does not name them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = LOG_CONTEXT.get()
        if context is not None:
            request_id, task_id = context
            fields = record.__dict__
            if request_id is not None:
                fields.setdefault("request_id", request_id)
            if task_id is not None:
                fields.setdefault("task_id", task_id)
        return True


def logging_config(level: str, loggers: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return a ``logging.config.dictConfig`` dict: JSON lines on stderr at ``level``, request ids added.

    ``loggers`` configures servers' own loggers (granian, gunicorn) on the same JSON handler.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": RequestContextFilter}},
        "formatters": {"json": {"()": json_formatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                              "formatter": "json", "filters": ["context"]}},
        "root": {"level": level.upper(), "handlers": ["json"]},
        # The access log is off unless ACCESS_LOG is set; when it is, its lines pass whatever LOGLEVEL says.
        "loggers": {ACCESS_LOGGER: {"level": "INFO"}, **(loggers or {})},
    }
