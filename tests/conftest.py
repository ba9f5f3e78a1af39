"""Fixtures shared by every test: a real Redis, a trained MLflow store and real worker processes."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.settings import Settings, get_settings
from tests.helpers import ROOT, RedisServer, WorkerProcess, free_port, make_settings

# Tests keep to their own databases of whatever Redis answers, and empty them before and after.
# DB 13 is a broker no shared worker listens on, for tests that need an empty or dead queue.
BROKER_DB, BACKEND_DB, LONELY_BROKER_DB = 14, 15, 13


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _no_worker_left_behind() -> Iterator[None]:
    """Fail the session if any test left a worker or a pool child running, and kill what it left."""
    # Set up first, so torn down last: every fixture that owns a worker has stopped it by then. A worker left
    # on a shared database would take other tests' tasks and answer their health checks.
    yield
    left = [worker.hostname for worker in WorkerProcess.started if worker.alive()]
    for worker in WorkerProcess.started:
        worker.kill()
    assert not left, f"tests left these workers running: {left}"


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield ``redis://host:port`` of a live Redis: TEST_REDIS_URL's, else a private redis-server."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
    proc = None
    if not _answers(url):
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("no Redis answers and redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                                stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while not _answers(url):
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.1)
    for db in (BROKER_DB, BACKEND_DB, LONELY_BROKER_DB):
        redis.Redis.from_url(f"{url}/{db}").flushdb()
    yield url
    for db in (BROKER_DB, BACKEND_DB, LONELY_BROKER_DB):
        redis.Redis.from_url(f"{url}/{db}").flushdb()
    if proc is not None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Train and register a champion once, in a private sqlite store; return its tracking URI."""
    home = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{home}/mlruns.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "training", "--quiet"], cwd=home, env=env, check=True,
                   timeout=300, stdout=subprocess.DEVNULL)
    return uri


@pytest.fixture(scope="session")
def stack_env(redis_base: str, mlflow_store: str) -> dict[str, str]:
    """Environment for API and worker processes under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "IRIS_", "BATCH_"))}
    env.update(
        CELERY_BROKER_URL=f"{redis_base}/{BROKER_DB}",
        CELERY_RESULT_BACKEND=f"{redis_base}/{BACKEND_DB}",
        MLFLOW_TRACKING_URI=mlflow_store,
        PYTHONPATH=str(ROOT),
        TAG="test",
        KEY_PREFIX="iris-test:",
        LOGLEVEL="WARNING",
        # Many test workers share this host: none serves metrics unless its test gives it a port of its own.
        WORKER_METRICS_PORT="0",
    )
    return env


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str]) -> Iterator[WorkerProcess]:
    """One worker on queue ``iris`` shared by the tests that do not stop it."""
    # A metrics port of its own: tests/integration/test_metrics.py scrapes it.
    proc = WorkerProcess({**stack_env, "WORKER_METRICS_PORT": str(free_port())}, name="shared").start()
    yield proc
    proc.stop()


@pytest.fixture
def settings(stack_env: dict[str, str]) -> Settings:
    return make_settings(stack_env)


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    """Let no test see settings cached by another."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


_PICKLE_SWITCH = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")


@pytest.fixture(autouse=True)
def _own_pickle_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let no test see MLflow's pickle switch as a worker's Registry, built in this process by another, forced it."""
    if _PICKLE_SWITCH is None:
        monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", _PICKLE_SWITCH)


@pytest.fixture
def lonely_env(stack_env: dict[str, str], redis_base: str) -> dict[str, str]:
    """Environment whose broker no shared worker listens on; the test starts and stops its own."""
    return {**stack_env, "CELERY_BROKER_URL": f"{redis_base}/{LONELY_BROKER_DB}"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, with AOF, that the test may stop, restart or pause."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def private_env(stack_env: dict[str, str], private_redis: RedisServer) -> dict[str, str]:
    """Environment whose broker and result backend are ``private_redis`` (DBs 0 and 1)."""
    return {**stack_env, "CELERY_BROKER_URL": private_redis.url(0), "CELERY_RESULT_BACKEND": private_redis.url(1)}
