"""Settings come from the environment once per process, with the documented defaults."""

import pytest

from shared.settings import Settings, get_settings


def test_defaults_match_the_documented_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "MLFLOW_TRACKING_URI", "PORT", "TAG"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings()
    assert settings.celery_broker_url == "redis://127.0.0.1:6379/0"
    assert settings.celery_result_backend == "redis://127.0.0.1:6379/1"
    assert settings.mlflow_tracking_uri == "sqlite:///mlruns.db"
    assert settings.model_uri == "models:/iris-classifier@champion"
    assert settings.port == 9191


def test_environment_overrides_and_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAG", "9.9.9")
    monkeypatch.setenv("SYNC_TIMEOUT_SECONDS", "2.5")
    first = get_settings()
    monkeypatch.setenv("TAG", "changed")
    assert first.tag == "9.9.9" and first.sync_timeout_seconds == 2.5
    assert get_settings() is first


def test_invalid_values_fail_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        Settings()
