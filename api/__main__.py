"""Serve the API with granian: ``python -m api`` (settings from the environment).

granian parses HTTP in Rust and hands requests to a pool of Python threads per process; measured on
2 cores it serves this app about 1.6x faster than gunicorn gthread (docs/performance.md), so ``make up``
and the container use it. ``gunicorn -c gunicorn.conf.py`` serves the same app for those who prefer it.
"""

from granian.constants import Interfaces
from granian.log import LogLevels
from granian.server import Server

from api.observability import multiprocess_dir
from api.web import auth
from shared.logs import logging_config
from shared.settings import get_settings


def main() -> None:
    """Start the server in the foreground until SIGINT or SIGTERM; exit non-zero at once if the keys are unusable."""
    settings = get_settings()
    try:
        # Here, before granian forks: in its workers the same error would be a traceback and a respawn loop.
        auth.load_keys(settings)
    except auth.KeyConfigError as exc:
        raise SystemExit(f"iris-api: cannot start: {exc}") from None
    # Before the workers start (granian forks them): each one's figures go to files there, and /metrics sums them.
    multiprocess_dir.prepare(settings)
    level = settings.loglevel.lower()
    # granian applies this in the main process and again in each worker process: JSON lines everywhere,
    # its own loggers included.
    server_loggers = {"_granian": {"level": settings.loglevel.upper(), "propagate": True}}
    Server(
        "api.wsgi:app",
        factory=True,
        interface=Interfaces.WSGI,
        address=settings.api_host,
        port=settings.port,
        workers=settings.web_concurrency,
        # Each waiting request holds a thread, so threads (not processes) carry the concurrency.
        blocking_threads=settings.web_threads,
        backlog=2048,
        respawn_failed_workers=True,
        workers_kill_timeout=15,
        log_level=LogLevels(level) if level in LogLevels.__members__ else LogLevels.info,
        log_dictconfig=logging_config(settings.loglevel, server_loggers),
    ).serve()


if __name__ == "__main__":
    main()
