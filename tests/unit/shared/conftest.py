"""Fixtures for the shared contract's unit tests."""

import pytest

from tests.unit.shared import fake_redis as fakes


@pytest.fixture(autouse=True)
def _no_celery_urls_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the URLs a test passes to create_celery be the ones its app connects to."""
    # Celery reads these variables over the broker and backend its app was given (celery.app.utils.Settings).
    for var in ("CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> type:
    """Make every kombu Redis channel build FakeRedis clients (tests/unit/shared/fake_redis.py)."""
    return fakes.install(monkeypatch)
