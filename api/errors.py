"""Turn every failure into the seed's error envelope: never an HTML page, never a stack trace."""

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from api.circuit import REDIS_DOWN
from api.envelope import ApiError, failure
from api.request_id import ENVIRON_KEY

log = logging.getLogger(__name__)


def _raised_on() -> str:
    """Name the view that failed as the seed did: ``classify`` becomes ``ApiClassify``."""
    view = (request.endpoint or "").rsplit(".", 1)[-1]
    return "Api" + "".join(part.title() for part in view.split("_"))


def init_app(app: Flask) -> None:
    """Register the envelope error handlers on ``app``."""

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> Response:
        return failure(exc.status, exc.raised, exc.raised_on or _raised_on(), exc.message,
                       data=exc.data, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status >= 500:
            return _internal_error(exc)
        allowed = getattr(exc, "valid_methods", None)
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return failure(status, type(exc).__name__, _raised_on(), exc.description or exc.name, headers=headers)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        if isinstance(exc, REDIS_DOWN):  # a Redis call no route caught: still the outage's 503, not a 500
            log.warning("Redis unreachable on %s %s: %s", request.method, request.path, exc)
            return failure(503, "QueueUnavailable", _raised_on(), "the task queue is unreachable; try again shortly",
                           headers={"Retry-After": "1"})
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> Response:
    """Log ``exc`` with its trace (the log line carries the request id) and answer a 500 naming only that id."""
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    request_id = request.environ.get(ENVIRON_KEY, "unknown")
    return failure(500, "InternalServerError", _raised_on(), f"internal error; request id {request_id}")
