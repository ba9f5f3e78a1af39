"""Map every failure of a request routed to the V2 blueprint to the Open Inference Protocol's ``{"error": "..."}``.

The same errors as every other route, with the same status and headers (Retry-After, Location, WWW-Authenticate);
only the body differs. Registered on the blueprint, so Flask picks these over the app's envelope handlers for any
request it routed there, the API-key check included; a path that routes nowhere answers the app's envelope 404.
"""

import logging

import orjson
from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from api.errors import ApiError, TimedOut
from api.web.error_handlers import known_failure
from api.web.request_id import ENVIRON_KEY

log = logging.getLogger(__name__)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Answer ``{"error": message}`` with ``status``."""
    return Response(orjson.dumps({"error": message}), status=status, headers=headers, mimetype="application/json")


def _api_error(exc: ApiError) -> Response:
    """Answer an ApiError with its own status, message and headers; a 504 names the task and where to poll it."""
    message = exc.message
    if isinstance(exc, TimedOut):
        message = (f"{message.split(';')[0]}; task {exc.task_id} stays queued: poll GET {exc.data['status_url']} "
                   "(answered in the /v1 envelope)")
    return error_response(exc.status, message, exc.headers)


def _http_error(exc: HTTPException) -> Response:
    """Answer werkzeug's 4xx (an oversized body) with its status and description."""
    status = exc.code or 500
    if status >= 500:
        return _internal_error(exc)
    return error_response(status, exc.description or exc.name)


def _unexpected(exc: Exception) -> Response:
    """Answer a publish the broker refused as QueueFull and a Redis outage as its 503, as the envelope does; anything
    else as a 500 naming only the request id."""
    known = known_failure(exc)
    return _api_error(known) if known is not None else _internal_error(exc)


def _internal_error(exc: BaseException) -> Response:
    """Log ``exc`` with its trace and answer a 500 that names only the request id."""
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, f"internal error; request id {request.environ.get(ENVIRON_KEY, 'unknown')}")


def init_blueprint(bp: Blueprint) -> None:
    """Register the protocol's error answers on ``bp``."""
    bp.register_error_handler(ApiError, _api_error)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(Exception, _unexpected)
