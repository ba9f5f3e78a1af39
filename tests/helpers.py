"""Helpers for tests that run the real stack: settings from a test environment, worker subprocesses."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import redis

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


def wait_until_ready(client: Any, timeout: float = 15) -> Any:
    """Probe /readyz with a Flask test client, as an orchestrator does, until it answers 200; return that answer.

    A single probe may miss a worker's reply to its 1.5 s broadcast on a loaded machine (CI once saw a 503 right
    after every route had answered), so probes are retried; a failure shows the body of the last 503.
    """
    deadline = time.monotonic() + timeout
    while (ready := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, ready.get_json()
        time.sleep(0.2)
    return ready


def make_settings(env: dict[str, str], **overrides: object) -> Settings:
    """Build settings from a test environment, as a process started with ``env`` would read them."""
    keys = {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "MLFLOW_TRACKING_URI", "TAG", "KEY_PREFIX",
            "IRIS_QUEUE", "LOGLEVEL", "VISIBILITY_TIMEOUT_SECONDS"}
    values = {k.lower(): v for k, v in env.items() if k in keys}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


class WorkerProcess:
    """A real ``celery -A worker worker`` subprocess, in a process group of its own with any pool children."""

    # Every worker a test started, so that the session can check none was left running (tests/conftest.py).
    started: ClassVar[list["WorkerProcess"]] = []

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

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue, "-n", f"{self.name}@%h",
                "--pool", "solo", "--without-gossip", "--without-mingle", "-l", "warning", *self.extra]

    def start(self, wait: bool = True, ready_timeout: float = 60) -> "WorkerProcess":
        # A group of its own, so that kill reaches whatever the worker started, not only the worker.
        self.proc = subprocess.Popen(self.argv(), cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, process_group=0)
        WorkerProcess.started.append(self)
        if wait:
            try:
                self.wait_ready(ready_timeout)
            except BaseException:
                self.kill()  # a worker that never answered must not go on serving other tests' queues
                raise
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

    def alive(self) -> bool:
        """Tell whether the worker or any process of its group (a pool child) still runs."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """Warm shutdown, as Ctrl-C or a container stop does; kill the group if it is not done in 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        self.kill()  # and any pool child the parent did not take with it

    def kill(self) -> None:
        """Die at once with its pool, as an OOM kill of the container or a lost host does."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            # The group outlives its leader while a member runs, so its id cannot have been reused.
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class RedisServer:
    """A private ``redis-server`` on a fixed port that a test can stop, restart, pause and resume.

    AOF is on by default (``appendfsync always``), as the compose stack runs Redis, so queued work
    survives a restart. Extra ``args`` are passed through (``--requirepass``, TLS options, ...).
    """

    def __init__(self, workdir: Path, aof: bool = True, password: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.server: str = server
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.aof = aof
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """Return the ``redis://`` URL of database ``db`` on this server."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_connect_timeout=1, socket_timeout=2)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 10) -> "RedisServer":
        """Start the server (again) on the same port and directory, and wait until it answers."""
        argv = [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.workdir), "--appendonly", "yes" if self.aof else "no",
                "--appendfsync", "always"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen([*argv, *self.args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            assert self.proc.poll() is None, f"redis-server on port {self.port} exited"
            assert time.monotonic() < deadline, f"redis-server on port {self.port} did not answer"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Shut down as an operator's restart does (SIGTERM: Redis flushes its AOF first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """Die at once, as a crashed or OOM-killed Redis does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)


def api_argv(server: str = "gunicorn") -> list[str]:
    """Return the command that serves the API as ``make up`` (granian) or ``gunicorn -c gunicorn.conf.py`` does."""
    return [sys.executable, "-m", *(["gunicorn", "-c", "gunicorn.conf.py"] if server == "gunicorn" else ["api"])]


@contextmanager
def api_server(env: dict[str, str], server: str = "gunicorn", **settings: str) -> Iterator[str]:
    """Run the API as ``gunicorn -c gunicorn.conf.py`` or ``python -m api`` (granian) on a free port, with extra
    settings as environment variables, until it answers /readyz; yield its base URL, and stop it after.

    A server that exits or never answers fails the test with the end of what it wrote to stderr.
    """
    port = free_port()
    env = {**env, **settings, "PORT": str(port), "GUNICORN_BIND": f"127.0.0.1:{port}", "API_HOST": "127.0.0.1"}
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(api_argv(server), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/readyz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() >= deadline or proc.poll() is not None:
                        stderr.seek(0)
                        tail = stderr.read().decode(errors="replace")[-2000:]
                        raise AssertionError(f"API did not become ready (exit code {proc.poll()}):\n{tail}") from None
                    time.sleep(0.2)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)


def children() -> dict[int, list[int]]:
    """Map each live pid to its children's pids, read from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name may hold spaces and parentheses; the fields after the last ")" do not.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def alive(pid: int) -> bool:
    """Tell whether ``pid`` runs (a zombie has finished and only waits to be reaped)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class UpScript:
    """scripts/up.sh in a session of its own, its output in a file."""

    def __init__(self, env: dict[str, str], run_dir: Path) -> None:
        self.env = {**env, "RUN_DIR": str(run_dir), "UP_SKIP_SETUP": "1"}
        self.port = int(self.env["PORT"])
        self.out = run_dir.parent / "up.out"
        with self.out.open("wb") as fh:
            self.proc = subprocess.Popen(["bash", "scripts/up.sh"], cwd=ROOT, env=self.env, stdout=fh,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.seen: set[int] = set()

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def report(self) -> str:
        """Return up.sh's output and the end of each program's log, for a failure message."""
        logs = sorted(self.out.parent.glob("run/*.log"))
        return self.output() + "".join(f"\n--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
                                       for log in logs)

    def spawned(self, program: str) -> list[int]:
        """Return the pids supervisord reported for ``program``, oldest first."""
        return [int(pid) for pid in re.findall(rf"spawned: '{program}' with pid (\d+)", self.output())]

    def processes(self) -> set[int]:
        """Return up.sh and every process below it now, and remember them for the teardown."""
        tree, found, todo = children(), set(), [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo.extend(tree.get(pid, []))
        self.seen |= found
        return found

    def wait_for(self, check: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"up.sh exited with {self.proc.returncode}:\n{self.report()}"
            with contextlib.suppress(OSError):
                result = check()
                if result:
                    return result
            assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s:\n{self.report()}"
            time.sleep(0.2)

    def terminate(self, timeout: float = 60) -> int:
        """Send SIGTERM to up.sh alone, as `kill` or a process manager does, and wait for it to exit."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        """Whatever a failed test left behind goes: up.sh first, then any process it ever had below it."""
        if self.proc.poll() is None:
            self.processes()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(60)
        for pid in self.seen:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class AuthRedisServer(RedisServer):
    """A private redis-server started with ``--requirepass``; its URLs percent-encode the password."""

    def url(self, db: int = 0) -> str:
        return f"redis://:{quote(self.password or '', safe='')}@127.0.0.1:{self.port}/{db}"


def next_reply(pubsub: Any, timeout: float) -> Any:
    """Return the next worker reply (decoded JSON) on a subscribed pub/sub channel, or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message:
            return json.loads(message["data"])
    return None


def load_champion(settings: Settings) -> Any:
    """Load the version the champion alias names, as a worker does (worker.model.Registry), and warm it."""
    from worker.model import Registry

    registry = Registry(settings)
    return registry.load(registry.resolve())
