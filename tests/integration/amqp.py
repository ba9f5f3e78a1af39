"""A RabbitMQ for a test: the one at TEST_AMQP_URL, with a virtual host of the test's own that goes afterwards.

A vhost holds its own queues and exchanges (Celery's quorum task queue, its delayed-delivery queues, the watchdog
queues), so deleting it leaves the broker as the test found it. Creating one needs ``rabbitmqctl`` on the broker's
host, as on this machine kind; tests skip with a clear message where either is missing.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.helpers import free_port

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
ADDRESS = f"{urlsplit(AMQP_URL).hostname}:{urlsplit(AMQP_URL).port or 5672}"


def answers(url: str = AMQP_URL) -> bool:
    """Tell whether something accepts TCP connections at ``url``'s host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1):
            return True
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def skip_reason() -> str | None:
    """Say why RabbitMQ tests cannot run here, or None when they can."""
    if not answers():
        return f"no RabbitMQ answers at {ADDRESS} (set TEST_AMQP_URL)"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed: it gives each test a vhost of its own"
    return None


@contextmanager
def private_vhost() -> Iterator[str]:
    """Yield TEST_AMQP_URL pointed at a new vhost that its user may use; delete the vhost and all in it after."""
    if (reason := skip_reason()) is not None:
        pytest.skip(reason)
    parts = urlsplit(AMQP_URL)
    vhost = f"iris-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", "", ""))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


class RabbitNode:
    """A RabbitMQ node of the test's own (``rabbitmq-server`` on a free port, its data in a temporary directory).

    It can be killed (SIGKILL: a crash, no clean shutdown) and started again on the same data, which the machine's
    shared broker must not be. ``rabbitmq-server`` run as root drops to the ``rabbitmq`` user, which owns the data.
    """

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="iris-rabbit-"))
        self.port = free_port()
        self.dist_port = free_port()  # Erlang distribution; its default, the port + 20000, may pass 65535
        self.name = f"iris-test-{uuid.uuid4().hex[:8]}@{socket.gethostname().split('.')[0]}"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        shutil.chown(self.home, "rabbitmq", "rabbitmq")
        for path in self.home.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RabbitNode":
        env = {**os.environ, "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port),
               "RABBITMQ_DIST_PORT": str(self.dist_port),
               "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
               "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"), "RABBITMQ_LOG_BASE": str(self.home / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
               "RABBITMQ_FEATURE_FLAGS_FILE": str(self.home / "feature_flags"),
               "RABBITMQ_PID_FILE": str(self.home / "pid")}
        # Its output goes to a file: with stdout on /dev/null the wrapper's ``su`` exits at once, status 0.
        with (self.home / "out.log").open("ab") as out:
            self.proc = subprocess.Popen(["rabbitmq-server"], env=env, cwd=self.home, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not answers(self.url):
            assert self.proc.poll() is None, (self.home / "out.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "rabbitmq-server did not listen within 60 s"
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL every process of the node (the Erlang VM and its wrapper), as a crashed host would."""
        pid_file = self.home / "pid"
        if pid_file.exists():  # the Erlang VM, which ``su`` started outside this process group
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            pid_file.unlink()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while answers(self.url):
            assert time.monotonic() < deadline, "the killed node still listens"
            time.sleep(0.05)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def private_node() -> Iterator[RabbitNode]:
    """Yield a started RabbitMQ node of the test's own; kill it and delete its data afterwards."""
    if shutil.which("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    if os.geteuid() != 0:
        pytest.skip("a private RabbitMQ node runs as the rabbitmq user: start the tests as root")
    node = RabbitNode()
    try:
        yield node.start()
    finally:
        node.remove()
