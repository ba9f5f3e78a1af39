"""The servers' entry point (granian via ``python -m api``, and gunicorn): set up this process, then build the app."""

import sys

from flask import Flask

from api import create_app
from shared import tracing
from shared.settings import get_settings


def app() -> Flask:
    """Tune this server process, then return the app; logging is configured by the server before this runs."""
    settings = get_settings()
    # Each request thread waits for its reply and wakes when it comes, so many threads want the GIL at
    # once; a forced hand-off every 5 ms (CPython's default) costs two context switches each time, and
    # here they hand it over when they block anyway. Measured: +7% req/s at 50 ms (docs/performance.md).
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    # Here, in each server process (granian and gunicorn fork before loading the app): the exporter's thread
    # must run in the process whose spans it sends. A no-op unless the OTel environment names an exporter.
    tracing.setup("iris-api")
    return create_app(settings)
