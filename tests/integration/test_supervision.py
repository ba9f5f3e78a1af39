"""`make up` supervises the stack: scripts/up.sh, run for real, restarts what dies and stops everything it started.

The tests run scripts/up.sh itself (the code path of `make up`) with UP_SKIP_SETUP=1, since the test session
has installed the venv and trained a model already, and read supervisord's lines from its output.
"""

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from shared import tasks
from shared.celery_app import create_celery
from tests.helpers import SEED_EXAMPLE, RedisServer, UpScript, alive, free_port, make_settings

pytestmark = pytest.mark.integration


def _call(url: str, body: Any = None, timeout: float = 15) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _answered(url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """Call ``url`` and fail the test, rather than retry, when nothing answers there."""
    try:
        return _call(url, body)
    except OSError as exc:
        raise AssertionError(f"{url} did not answer: {exc}") from None


def test_make_up_restarts_a_killed_worker_and_sigterm_stops_everything_it_started(
        private_env: dict[str, str], private_redis: RedisServer, up: Callable[[dict[str, str]], UpScript]) -> None:
    stack = up({**private_env, "PORT": str(free_port()), "WORKERS": "2"})
    base = f"http://127.0.0.1:{stack.port}"
    app = create_celery(make_settings(private_env))
    nodes = [f"worker{n}@{socket.gethostname()}" for n in (1, 2)]

    def model_info(node: str) -> dict[str, Any] | None:
        replies = app.control.broadcast(tasks.MODEL_INFO_COMMAND, reply=True, timeout=0.5, destination=[node])
        return next((info for reply in replies for info in reply.values()), None)

    try:
        stack.wait_for(lambda: "is ready" in stack.output(), "the ready banner", 120)
        assert f"using the Redis at {private_env['CELERY_BROKER_URL']}" in stack.output()
        # WORKERS=2: two workers, each with a node name of its own.
        first = {node: stack.wait_for(partial(model_info, node), f"{node} answering", 60) for node in nodes}
        assert _call(f"{base}/v1/classify", SEED_EXAMPLE)[0] == 200

        victim = stack.spawned("worker-1")[-1]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # Until the kernel has torn the killed process down (~0.1 s on a busy machine) Redis still holds its
        # BRPOP and would hand it the next message, which is then lost. That is kombu's Redis transport, not
        # supervision: classify once supervisord has reaped the worker.
        stack.wait_for(lambda: "exited: worker-1 (terminated by SIGKILL; not expected)" in stack.output(),
                       "supervisord reporting the kill", 10)

        def back() -> dict[str, Any] | None:
            # The API answers all along, served by the other worker while this one is replaced.
            assert _answered(f"{base}/livez")[0] == 200
            status, body = _answered(f"{base}/v1/classify", SEED_EXAMPLE)
            assert status == 200 and body["data"]["pred_label"] == "Iris-virginica", (status, stack.report())
            return model_info(nodes[0])

        info = stack.wait_for(back, "worker1 back after SIGKILL", 60)
        print(f"worker1 answered again {time.monotonic() - killed_at:.1f}s after SIGKILL")
        assert info["loaded_at"] != first[nodes[0]]["loaded_at"], "the reply came from the killed worker"
        assert len(stack.spawned("worker-1")) == 2 and stack.spawned("worker-1")[-1] != victim
        assert stack.spawned("worker-2") == stack.spawned("worker-2")[:1], "the other worker was restarted"
        assert len(stack.spawned("api")) == 1, "the API was restarted"
        status, body = _call(f"{base}/readyz")
        assert status == 200 and body["data"]["status"] == "ready"

        started = stack.processes()
        assert len(started) >= 6, started  # up.sh, supervisord, 2 workers, granian and its workers
        assert stack.terminate() == 143
    finally:
        app.close()
    left = {pid for pid in started if alive(pid)}
    assert not left, f"still running after SIGTERM: {left}\n{stack.output()}"
    assert "stopped: worker-1" in stack.output() and "stopped: api" in stack.output()
    # It stopped what it started, and nothing else: the Redis it found still answers.
    assert private_redis.answers()


def test_make_up_restarts_the_redis_it_started_and_stops_it_on_sigterm(
        stack_env: dict[str, str], up: Callable[[dict[str, str]], UpScript]) -> None:
    redis_port = free_port()
    env = {**stack_env, "PORT": str(free_port()), "WORKERS": "1",
           "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
           "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/1"}
    stack = up(env)
    base = f"http://127.0.0.1:{stack.port}"
    stack.wait_for(lambda: "is ready" in stack.output(), "the ready banner", 120)
    assert f"redis-server will run on 127.0.0.1:{redis_port}" in stack.output()
    # Its Redis keeps an append-only file in the run directory, as the compose Redis does.
    assert (stack.out.parent / "run" / "redis" / "appendonlydir").is_dir()

    os.kill(stack.spawned("redis")[-1], signal.SIGKILL)
    stack.wait_for(lambda: len(stack.spawned("redis")) == 2, "a new redis-server", 30)
    stack.wait_for(lambda: _call(f"{base}/v1/classify", SEED_EXAMPLE)[0] == 200, "a classify after the restart", 60)
    assert "exited: redis (terminated by SIGKILL; not expected)" in stack.output()

    started = stack.processes()
    assert stack.spawned("redis")[-1] in started
    assert stack.terminate() == 143
    left = {pid for pid in started if alive(pid)}
    assert not left, f"still running after SIGTERM: {left}\n{stack.output()}"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", redis_port)) != 0, "its redis-server still listens"
