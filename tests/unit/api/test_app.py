"""The app factory builds the app from settings and connects to nothing; the entry point tunes the process."""

import sys
from collections.abc import Iterator

import pytest

from api import create_app
from shared.settings import Settings
from tests.helpers import ROOT

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def restore_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("restore_switch_interval")
def test_the_server_entry_point_sets_the_gil_switch_interval_and_create_app_does_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from api import wsgi
    from shared.settings import get_settings

    sys.setswitchinterval(0.005)
    create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, gil_switch_interval_ms=20))
    assert sys.getswitchinterval() == pytest.approx(0.005)
    monkeypatch.setenv("GIL_SWITCH_INTERVAL_MS", "20")
    monkeypatch.setenv("CELERY_BROKER_URL", DOWN)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", DOWN)
    get_settings.cache_clear()
    try:
        wsgi.app()
    finally:
        get_settings.cache_clear()
    assert sys.getswitchinterval() == pytest.approx(0.02)


@pytest.mark.usefixtures("restore_switch_interval")
def test_create_app_with_redis_down_still_builds_the_routes() -> None:
    app = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN))
    assert {"/v1/classify", "/v1/classify/async", "/v1/tasks/<task_id>", "/readyz"} <= {
        rule.rule for rule in app.url_map.iter_rules()}


@pytest.mark.parametrize("entry_point", ["python -m api", "gunicorn -c gunicorn.conf.py"])
def test_the_entry_points_refuse_unusable_keys_with_one_line_before_serving(
        monkeypatch: pytest.MonkeyPatch, entry_point: str) -> None:
    import runpy

    from api import __main__ as granian_entry
    from shared.settings import get_settings

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server was built despite unusable keys")

    monkeypatch.setattr(granian_entry, "Server", no_server)
    monkeypatch.setattr("api.observability.multiprocess_dir.prepare", no_server)
    monkeypatch.setenv("API_KEYS", "first-key-0123456789, a key with spaces")
    monkeypatch.delenv("API_KEYS_FILE", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as stopped:
            if entry_point == "python -m api":
                granian_entry.main()
            else:
                runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    finally:
        get_settings.cache_clear()
    message = str(stopped.value.code)
    assert message == "iris-api: cannot start: API_KEYS: key 2 of 2 contains whitespace; separate keys with commas"
