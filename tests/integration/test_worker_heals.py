"""A worker heals itself after broker faults: it resumes consuming, or exits so that a supervisor replaces it.

Each drill runs the real API app, real ``celery worker`` subprocesses and a Redis of the test's own (AOF on),
with the default watchdog settings. The test plays the supervisor: when the worker exits, it starts a
replacement under the same node name, as ``make up`` and the container's restart policy do.
"""

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from api import create_app
from tests.blackhole_proxy import BlackholeProxy
from tests.helpers import SEED_EXAMPLE, RedisServer, WorkerProcess, make_settings

pytestmark = pytest.mark.integration

RECOVERY_LIMIT = 30.0  # seconds from Redis being reachable again to a sync call answered by a worker


class Supervised:
    """A worker that a thread replaces within 0.1 s whenever it exits, remembering how each one ended."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.current = WorkerProcess(env, name="heal").start()
        self.exit_codes: list[int] = []
        self.all = [self.current]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            assert self.current.proc is not None
            code = self.current.proc.poll()
            if code is not None:
                self.exit_codes.append(code)
                self.current = WorkerProcess(self.env, name="heal").start(wait=False)
                self.all.append(self.current)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for worker in self.all:
            worker.stop()


# A task the worker was running or acknowledging when Redis went away is redelivered after the visibility
# timeout (docs/reliability.md); 20 s instead of the default 120 s keeps these drills short.
VISIBILITY = "20"


@pytest.fixture
def heal_env(private_env: dict[str, str]) -> dict[str, str]:
    return {**private_env, "VISIBILITY_TIMEOUT_SECONDS": VISIBILITY}


@pytest.fixture
def supervised(heal_env: dict[str, str]) -> Iterator[Supervised]:
    workers = Supervised(heal_env)
    yield workers
    workers.stop()


def client_for(env: dict[str, str]) -> FlaskClient:
    return create_app(make_settings(env, sync_timeout_seconds=2)).test_client()


def queue_async(client: FlaskClient, count: int) -> list[str]:
    """Queue ``count`` async classifications through the API and return their poll URLs."""
    urls = []
    for _ in range(count):
        resp = client.post("/v1/classify/async", json=SEED_EXAMPLE)
        assert resp.status_code == 202, resp.get_json()
        urls.append(resp.headers["Location"])
    return urls


def seconds_until_sync_succeeds(client: FlaskClient, since: float) -> float:
    """Call POST /v1/classify until a worker answers; return the seconds since ``since``."""
    while time.monotonic() - since < RECOVERY_LIMIT + 30:
        if client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 200:
            return time.monotonic() - since
        time.sleep(0.25)
    raise AssertionError("no sync call succeeded")


def assert_all_succeed(client: FlaskClient, urls: list[str], timeout: float) -> None:
    """Poll every URL until SUCCESS."""
    pending = set(urls)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for url in list(pending):
            resp = client.get(url)
            if resp.status_code == 200 and resp.get_json()["data"]["status"] == "SUCCESS":
                pending.discard(url)
        time.sleep(0.5)
    lost = sorted(urls.index(url) for url in pending)
    assert not pending, f"tasks {lost} of {len(urls)} did not succeed within {timeout} s"


def test_a_worker_paused_through_a_redis_restart_is_replaced_and_every_task_succeeds(
    heal_env: dict[str, str], private_redis: RedisServer, supervised: Supervised
) -> None:
    client = client_for(heal_env)
    assert client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 200
    worker = supervised.current
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        queued = queue_async(client, 10)  # one of these may already sit in the paused worker's socket
        private_redis.restart()
        reachable = time.monotonic()
        queued += queue_async(client, 10)
        time.sleep(2)  # the pause outlasts the restart, as a VM freeze or a partition during failover does
    finally:
        worker.proc.send_signal(signal.SIGCONT)

    recovery = seconds_until_sync_succeeds(client, reachable)
    print(f"paused worker + Redis restart: sync calls succeed {recovery:.1f} s after Redis is back; "
          f"worker exit codes {supervised.exit_codes}")
    assert recovery < RECOVERY_LIMIT
    # The stalled worker exits with the watchdog's status rather than hanging; if a future kombu resumes
    # consuming instead, no exit is needed and this list stays empty.
    assert all(code == 3 for code in supervised.exit_codes), supervised.exit_codes
    assert_all_succeed(client, queued, timeout=60)


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_a_running_worker_resumes_consuming_after_redis_restarts_or_crashes(
    heal_env: dict[str, str], private_redis: RedisServer, supervised: Supervised, how: str
) -> None:
    client = client_for(heal_env)
    assert client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 200
    # Let the worker take these before Redis goes: a task Redis hands out in the instant it dies is lost with
    # the reply (kombu's BRPOP; docs/reliability.md). Their results must survive.
    done = queue_async(client, 10)
    assert_all_succeed(client, done, timeout=30)
    stop: Callable[[], Any] = private_redis.stop if how == "restart" else private_redis.kill
    stop()
    time.sleep(2)  # the worker notices and starts reconnecting
    private_redis.start()
    reachable = time.monotonic()
    queued = queue_async(client, 10)

    recovery = seconds_until_sync_succeeds(client, reachable)
    print(f"Redis {how}: sync calls succeed {recovery:.1f} s after Redis is back")
    assert recovery < RECOVERY_LIMIT
    assert supervised.exit_codes == [], "the worker should reconnect by itself"
    assert_all_succeed(client, done + queued, timeout=60)


@pytest.mark.parametrize("kombu_checks", ["on", "off"])
def test_a_worker_whose_connections_a_proxy_dropped_silently_consumes_again(
    stack_env: dict[str, str], private_redis: RedisServer, kombu_checks: str
) -> None:
    """With kombu's health checks on (the default) the worker usually reconnects by itself. With them off, no
    transport option sees the stall, so this is the watchdog's deterministic drill: it must exit with 3."""
    proxy = BlackholeProxy(private_redis.port)
    env = {**stack_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/0",
           "CELERY_RESULT_BACKEND": private_redis.url(1), "VISIBILITY_TIMEOUT_SECONDS": VISIBILITY}
    if kombu_checks == "off":
        env["BROKER_HEALTH_CHECK_INTERVAL_SECONDS"] = "3600"
    workers = Supervised(env)
    try:
        client = client_for({**env, "CELERY_BROKER_URL": private_redis.url(0)})
        assert client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 200
        proxy.blackhole()  # every broker connection of the worker now leads nowhere, and nothing tells it
        dropped = time.monotonic()
        time.sleep(1.5)  # let the worker's last BRPOP expire unanswered, so no reply with a task is swallowed
        queued = queue_async(client, 10)

        recovery = seconds_until_sync_succeeds(client, dropped)
        print(f"proxy dropped the worker's connections (kombu checks {kombu_checks}): sync calls succeed "
              f"{recovery:.1f} s later; worker exit codes {workers.exit_codes}")
        assert recovery < RECOVERY_LIMIT
        if kombu_checks == "off":
            assert workers.exit_codes == [3]
        else:
            assert all(code == 3 for code in workers.exit_codes), workers.exit_codes
        assert_all_succeed(client, queued, timeout=60)
    finally:
        workers.stop()
        proxy.close()
