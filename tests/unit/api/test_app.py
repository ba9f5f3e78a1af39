"""The app factory: builds the app from settings, connects to nothing, tunes the interpreter for threads."""

import sys
from collections.abc import Iterator

import pytest

from api import create_app
from shared.settings import Settings

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def restore_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("restore_switch_interval")
def test_create_app_sets_the_gil_switch_interval_from_settings() -> None:
    create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, gil_switch_interval_ms=20))
    assert sys.getswitchinterval() == pytest.approx(0.02)


@pytest.mark.usefixtures("restore_switch_interval")
def test_create_app_with_redis_down_still_builds_the_routes() -> None:
    app = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN))
    assert {"/v1/classify", "/v1/classify/async", "/v1/tasks/<task_id>", "/readyz"} <= {
        rule.rule for rule in app.url_map.iter_rules()}
