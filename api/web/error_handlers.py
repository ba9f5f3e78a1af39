"""Map every failure to the seed's error envelope, in one place: never an HTML page, never a stack trace."""

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from api.broker.circuit import REDIS_DOWN, refused
from api.errors import ApiError, QueueFull, QueueUnavailable
from api.web.envelope import failure
from api.web.request_id import ENVIRON_KEY

log = logging.getLogger(__name__)


def _raised_on() -> str:
    """Name the view that failed as the seed did: ``classify`` becomes ``ApiClassify``."""
    view = (request.endpoint or "").rsplit(".", 1)[-1]
    return "Api" + "".join(part.title() for part in view.split("_"))


def _api_error(exc: ApiError) -> Response:
    """Answer an :class:`ApiError` with its own status, name, message, data and headers."""
    return failure(exc.status, exc.raised, exc.raised_on or _raised_on(), exc.message, data=exc.data,
                   headers=exc.headers)


def _http_error(exc: HTTPException) -> Response:
    """Answer werkzeug's 4xx (unknown route, wrong method, oversized body) in the envelope."""
    status = exc.code or 500
    if status >= 500:
        return _internal_error(exc)
    allowed = getattr(exc, "valid_methods", None)
    headers = {"Allow": ", ".join(allowed)} if allowed else None
    return failure(status, type(exc).__name__, _raised_on(), exc.description or exc.name, headers=headers)


def known_failure(exc: Exception) -> ApiError | None:
    """Return the API error an uncaught broker failure stands for (a refused publish: QueueFull; a Redis outage:
    QueueUnavailable), logged once here, or None for anything else. Every protocol's handlers ask this."""
    if refused(exc):
        log.warning("the broker refused a publish on %s %s: answering 503 QueueFull", request.method, request.path)
        return QueueFull()
    if isinstance(exc, REDIS_DOWN):
        log.warning("Redis unreachable on %s %s: %s", request.method, request.path, exc)
        return QueueUnavailable()
    return None


def _unexpected(exc: Exception) -> Response:
    """Answer a publish the broker refused that no layer caught as QueueFull, a Redis outage as the outage's 503;
    anything else as a bare 500."""
    known = known_failure(exc)
    return _api_error(known) if known is not None else _internal_error(exc)


def _internal_error(exc: BaseException) -> Response:
    """Log ``exc`` with its trace (the log line carries the request id) and answer a 500 naming only that id."""
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    request_id = request.environ.get(ENVIRON_KEY, "unknown")
    return failure(500, "InternalServerError", _raised_on(), f"internal error; request id {request_id}")


def init_app(app: Flask) -> None:
    """Register the envelope error handlers on ``app``."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
