"""gunicorn settings for the API: ``gunicorn -c gunicorn.conf.py`` (values come from the environment)."""

import os

from api.observability import multiprocess_dir
from api.web import auth
from shared.logs import logging_config
from shared.settings import get_settings

_settings = get_settings()
try:
    # In the master, as it reads this file: in a worker the same error would be a traceback per boot attempt.
    auth.load_keys(_settings)
except auth.KeyConfigError as _exc:
    # SystemExit, not an Exception: gunicorn would print its own traceback around an Exception from this file.
    raise SystemExit(f"iris-api: cannot start: {_exc}") from None
# In the master, before it forks: each worker's figures go to files there, and /metrics sums them.
multiprocess_dir.prepare(_settings)

wsgi_app = "api.wsgi:app()"
bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{_settings.port}")
# Requests mostly wait on the queue, so threads, not processes, carry the concurrency.
workers = _settings.web_concurrency
worker_class = "gthread"
threads = _settings.web_threads
keepalive = 5
timeout = max(30, int(_settings.sync_timeout_seconds) + 10)
graceful_timeout = 10
loglevel = _settings.loglevel.lower()
# The app writes its own JSON access line when ACCESS_LOG=1 (api/web/access_log.py); gunicorn's would repeat it.
accesslog = None
errorlog = "-"
# JSON lines for the app and for gunicorn's own error log, set up once in the master before it forks.
logconfig_dict = logging_config(_settings.loglevel, {
    "gunicorn.error": {"level": _settings.loglevel.upper(), "propagate": True},
    # gunicorn writes its access line whenever logconfig_dict is set; WARNING mutes it (the app's is enough).
    "gunicorn.access": {"level": "WARNING", "propagate": True},
})
