"""One JSON line per request (ACCESS_LOG=1): method, path, status, duration and the request id."""

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from api.web.request_id import WSGIApp
from shared.logs import ACCESS_LOGGER

log = logging.getLogger(ACCESS_LOGGER)


class AccessLogMiddleware:
    """Log each request once its status is known; installed inside RequestIdMiddleware, so lines carry the id."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["500"]  # what the server sends if the app fails before starting its response

        def start(line, headers, exc_info=None):  # unannotated: annotations here would be evaluated per request
            status[0] = line
            return start_response(line, headers, exc_info)

        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        try:
            return self.app(environ, start)
        finally:
            code = int(status[0][:3])
            log.info("%s %s %d", method, path, code, extra={
                "method": method, "path": path, "status": code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)})
