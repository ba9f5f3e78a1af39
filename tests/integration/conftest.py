"""Integration fixtures: the real Flask app wired to the test Redis and a real worker."""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api import create_app
from tests.helpers import AuthRedisServer, UpScript, WorkerProcess, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(stack_env: dict[str, str], worker: WorkerProcess) -> FlaskClient:
    """A test client of the real app, with a live worker on queue ``iris``."""
    return create_app(make_settings(stack_env)).test_client()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], UpScript]]:
    """Start scripts/up.sh (`make up`) with an environment; whatever it started is gone after the test."""
    started: list[UpScript] = []

    def start(env: dict[str, str]) -> UpScript:
        started.append(UpScript(env, tmp_path / "run"))
        return started[-1]

    yield start
    for script in started:
        script.cleanup()


@pytest.fixture
def secret() -> str:
    """Return the unique part of the password, which must never be shown in any encoding."""
    return uuid.uuid4().hex


@pytest.fixture
def auth_redis(tmp_path: Path, secret: str) -> Iterator[AuthRedisServer]:
    # Generated passwords often hold characters that a URL must percent-encode.
    server = AuthRedisServer(tmp_path / "redis", aof=False, password=f"p@ss:w/rd#{secret}+=")
    server.start()
    yield server
    server.stop()
