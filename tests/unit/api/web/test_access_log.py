"""ACCESS_LOG=1 writes one JSON line per request, naming its request id; off by default."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from api import create_app
from shared.logs import ACCESS_LOGGER, RequestContextFilter, json_formatter
from shared.settings import Settings

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """Capture the access logger's output as the entry points format it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_access_log_writes_one_json_line_per_request(access_lines: io.StringIO) -> None:
    client = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, access_log=True)).test_client()
    client.get("/livez", headers={"X-Request-ID": "acc-1"})
    client.get("/nothing", headers={"X-Request-ID": "acc-2"})
    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    assert [(x["method"], x["path"], x["status"], x["request_id"]) for x in lines] == [
        ("GET", "/livez", 200, "acc-1"), ("GET", "/nothing", 404, "acc-2")]
    assert all(isinstance(x["duration_ms"], float) and x["logger"] == ACCESS_LOGGER for x in lines)


def test_access_log_is_off_by_default(access_lines: io.StringIO) -> None:
    client = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN)).test_client()
    client.get("/livez")
    assert access_lines.getvalue() == ""
