"""Give every response an ``X-Request-ID``: the client's own when it is sane, else a new one.

A WSGI middleware rather than Flask hooks: it also covers the answers Flask builds itself (404, 405,
413, 500) and costs one header lookup, one regex match and one header append per request.
"""

import random
import re
from collections.abc import Callable, Iterable
from typing import Any

from shared.logs import LOG_CONTEXT

HEADER = "X-Request-ID"
ENVIRON_KEY = "iris.request_id"
MAX_LENGTH = 128
# Safe to echo into a header and a log line: no spaces, quotes, commas or control characters.
_sane = re.compile(r"[A-Za-z0-9._:-]+").fullmatch

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def new_request_id() -> str:
    """Return a fresh random 128-bit id as 32 hex digits.

    An id to trace by, not a secret: ``random`` is reseeded in each forked process and costs a tenth
    of ``os.urandom``'s system call.
    """
    return f"{random.getrandbits(128):032x}"


def accept_request_id(value: str | None) -> str:
    """Return ``value`` if it is a sane id (at most 128 safe characters), else a new id."""
    if value is not None and len(value) <= MAX_LENGTH and _sane(value) is not None:
        return value
    return new_request_id()


class RequestIdMiddleware:
    """Set the request id for the request's log lines and the queue, and echo it on the response."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request_id = environ[ENVIRON_KEY] = accept_request_id(environ.get("HTTP_X_REQUEST_ID"))

        def start(status, headers, exc_info=None):  # unannotated: annotations here would be evaluated per request
            headers.append((HEADER, request_id))
            return start_response(status, headers, exc_info)

        # Server threads are reused: the ids are reset so that later lines on this thread never carry them.
        token = LOG_CONTEXT.set([request_id, None])
        try:
            return self.app(environ, start)
        finally:
            LOG_CONTEXT.reset(token)
