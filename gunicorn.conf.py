"""gunicorn settings for the API: ``gunicorn -c gunicorn.conf.py`` (values come from the environment)."""

import os

from shared.settings import get_settings

_settings = get_settings()

wsgi_app = "api:create_app()"
bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{_settings.port}")
# Requests mostly wait on the queue, so threads, not processes, carry the concurrency.
workers = _settings.web_concurrency
worker_class = "gthread"
threads = _settings.web_threads
keepalive = 5
timeout = max(30, int(_settings.sync_timeout_seconds) + 10)
graceful_timeout = 10
loglevel = _settings.loglevel.lower()
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
