"""Helpers for tests that run the real stack: settings from a test environment, worker subprocesses."""

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SEED_EXAMPLE = {"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}


def free_port() -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until_done(client: Any, status_url: str, timeout: float = 30) -> dict[str, Any]:
    """Poll a task's status URL with a Flask test client until SUCCESS or FAILURE; return its data."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = client.get(status_url)
        assert resp.status_code == 200, resp.get_json()
        data: dict[str, Any] = resp.get_json()["data"]
        if data["status"] in ("SUCCESS", "FAILURE"):
            return data
        time.sleep(0.1)
    raise AssertionError(f"{status_url} not done within {timeout}s")


def make_settings(env: dict[str, str], **overrides: object) -> Settings:
    """Build settings from a test environment, as a process started with ``env`` would read them."""
    keys = {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "MLFLOW_TRACKING_URI", "TAG", "KEY_PREFIX",
            "IRIS_QUEUE", "LOGLEVEL"}
    values = {k.lower(): v for k, v in env.items() if k in keys}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


class WorkerProcess:
    """A real ``celery -A worker worker`` subprocess."""

    def __init__(self, env: dict[str, str], queue: str = "iris", name: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.env = {**env, "IRIS_QUEUE": queue}
        self.queue = queue
        self.name = name or f"test-{uuid.uuid4().hex[:8]}"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def start(self, wait: bool = True) -> "WorkerProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue, "-n", f"{self.name}@%h",
             "--pool", "solo", "--without-gossip", "--without-mingle", "-l", "warning", *self.extra],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until this worker answers the model-info control command."""
        from shared import tasks
        from shared.celery_app import create_celery

        app = create_celery(make_settings(self.env))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.stderr()
                replies = app.control.broadcast(tasks.MODEL_INFO_COMMAND, reply=True, timeout=0.5,
                                                destination=[self.hostname])
                if replies:
                    return
            raise AssertionError(f"worker {self.hostname} not ready in {timeout}s")
        finally:
            app.close()

    def stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        """Warm shutdown, as Ctrl-C or a container stop does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """Die at once, as an OOM kill or a lost host does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
