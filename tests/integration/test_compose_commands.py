"""docker-compose.yml's own commands run for real, without Docker.

The test reads the trainer, worker, API and MLflow services from docker-compose.yml, resolves each argv as
Docker would (the compose ``entrypoint``/``command``, else the Dockerfile's ENTRYPOINT/CMD), builds each
environment from the Dockerfile's ENV plus the compose ``environment`` with ``${VAR:-default}`` substituted,
stages the files the Dockerfile COPYs into a private /app, maps the service hostnames to this machine, and
then starts them: the MLflow server, the one-shot trainer (exit 0), a worker and the API, and classifies the
seed example through the API.
"""

import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import yaml

from tests.helpers import ROOT, SEED_EXAMPLE

pytestmark = pytest.mark.integration

COMPOSE_FILE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent
# Compose interpolation: $$ is a literal $, ${VAR}, ${VAR:-default} (unset or empty), ${VAR-default} (unset),
# ${VAR:?message} (an error when unset or empty).
_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}"
                  r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
# What `make env` writes into .env: the compose file has no default for these.
SECRETS = {"REDIS_PASSWORD": "compose-test-redis", "API_KEYS": "compose-test-key-0123456789",
           "FLOWER_BASIC_AUTH": "admin:compose-test"}


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """Interpolate ``value`` (recursively) the way compose does with ``variables`` as its environment."""
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        current = variables.get(name)
        if match["op"] == ":-" and not current:
            return match["default"]
        if match["op"] == ":?" and not current:
            raise KeyError(f"{name}: {match['default']}")
        if match["op"] == "-" and current is None:
            return match["default"]
        return current or ""

    return _VAR.sub(one, value)


def test_substitute_refuses_a_required_variable_that_is_unset() -> None:
    with pytest.raises(KeyError, match="run make env"):
        substitute("redis://iris:${REDIS_PASSWORD:?set it (run make env)}@redis", {})
    assert substitute("${REDIS_PASSWORD:?x}", {"REDIS_PASSWORD": "p"}) == "p"


def test_substitute_follows_compose_rules() -> None:
    variables = {"SET": "x", "EMPTY": ""}
    assert substitute("${SET:-d}/${EMPTY:-d}/${UNSET:-d}", variables) == "x/d/d"
    assert substitute("${EMPTY-d}/${UNSET-d}/${SET}/$SET/$${SET}", variables) == "/d/x/x/${SET}"
    assert substitute(["a=${UNSET:-mlflow,mlflow:*}"], {}) == ["a=mlflow,mlflow:*"]


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class Dockerfile:
    """The few instructions of a Dockerfile that decide what a container runs: WORKDIR, ENV, COPY, ENTRYPOINT, CMD."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.workdir = "/"
        self.env: dict[str, str] = {}
        self.copies: list[tuple[list[str], str]] = []
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            instruction, _, rest = line.partition(" ")
            instruction, rest = instruction.upper(), rest.strip()
            if instruction == "FROM":
                # Only single-stage files are supported; a new stage would reset all of this.
                assert not self.copies, f"{path.name}: multi-stage builds are not handled by this test"
            elif instruction == "WORKDIR":
                self.workdir = rest
            elif instruction == "ENV":
                for pair in shlex.split(rest):
                    key, _, value = pair.partition("=")
                    # $VAR and ${VAR} refer to the image's environment so far; this machine's stands in for
                    # the base image's (PATH).
                    self.env[key] = _ENV_REF.sub(lambda m: {**os.environ, **self.env}.get(m[1] or m[2], ""), value)
            elif instruction == "COPY":
                if "--from=" in rest:  # from another image (uv's binary), not from the build context
                    continue
                parts = [p for p in shlex.split(rest) if not p.startswith("--")]
                self.copies.append((parts[:-1], parts[-1]))
            elif instruction == "ENTRYPOINT":
                self.entrypoint, self.cmd = json.loads(rest), []  # Docker resets CMD with a new ENTRYPOINT
            elif instruction == "CMD":
                self.cmd = json.loads(rest)

    def stage(self, app_dir: Path) -> None:
        """Copy what the COPY instructions put under WORKDIR into ``app_dir``, as the image would hold it."""
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for sources, dest in self.copies:
            target = app_dir / dest.removeprefix(self.workdir).lstrip("/").removeprefix("./")
            for source in sources:
                src = ROOT / source
                if src.is_dir():  # a directory's contents go into the destination
                    shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
                elif dest.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / src.name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)


def test_dockerfile_reader_expands_env_and_skips_copies_from_other_images() -> None:
    image = Dockerfile(ROOT / "Dockerfile.api")
    assert image.env["PATH"] == f"/opt/venv/bin:{os.environ['PATH']}"
    assert (["pyproject.toml", "uv.lock"], "./") in image.copies
    assert not any("/uv" in sources for sources, _ in image.copies)


def container_argv(service: Mapping[str, Any], image: Dockerfile | None) -> list[str]:
    """Resolve what a container runs, by Docker's rules: a compose entrypoint drops the image's CMD."""
    def as_list(value: Any) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]

    if "entrypoint" in service:
        return as_list(service["entrypoint"]) + as_list(service.get("command", []))
    assert image is not None, "a service without an entrypoint needs a Dockerfile"
    command = as_list(service["command"]) if "command" in service else image.cmd
    return image.entrypoint + command


def local_argv(argv: list[str]) -> list[str]:
    """Run the container's program from this interpreter's environment."""
    program, *args = argv
    if program in ("python", "python3"):
        return [sys.executable, *args]
    if program == "celery":
        return [sys.executable, "-m", "celery", *args]
    local = BIN / program
    assert local.exists(), f"{program} is not installed in {BIN}"
    return [str(local), *args]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Subprocesses in their own process groups, each logging to a file, all ended at teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-tail:]

    def assert_running(self, *names: str) -> None:
        for name in names:
            code = self.procs[name].poll()
            assert code is None, f"{name} exited with {code}:\n{self.log(name)}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # Whatever is left of the group (the worker's pool, uvicorn's workers) goes too.
            _signal_group(proc, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(10)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _get(url: str, timeout: float = 3) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _post(url: str, body: Any, timeout: float = 15,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _wait(check: Any, what: str, timeout: float, procs: Processes, *alive: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        procs.assert_running(*alive)
        try:
            result = check()
        except (OSError, http.client.HTTPException):
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s:\n" + "\n".join(
            f"--- {name} ---\n{procs.log(name)}" for name in alive)
        time.sleep(0.25)


def _status_with_host(port: int, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def run_health_check(service: Mapping[str, Any], env: dict[str, str]) -> int:
    """Run a service's ``CMD`` health check here, with ``env``, and return its exit status."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "the health check must run without a shell (the images have no curl either)"
    return subprocess.run(local_argv(test[1:]), env=env, capture_output=True, timeout=30).returncode


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = Processes(logs)
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as fh:
        return yaml.safe_load(fh)  # type: ignore[no-any-return]


def test_compose_file_keeps_its_guarantees(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "mlflow", "trainer", "worker", "api", "flower"} <= set(services)
    worker = services["worker"]
    # `docker compose up --scale worker=3` needs a worker without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["trainer"]["restart"] == "no"
    assert services["trainer"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["locust"]["profiles"] == ["load"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert '--maxmemory "$$REDIS_MAXMEMORY"' in redis_cmd and "--aclfile" in redis_cmd
    assert "--proto-max-bulk-len 8mb" in redis_cmd
    # What each image installs from uv.lock is checked in tests/unit/test_uv_lock.py.


def test_only_the_api_listens_beyond_loopback_and_every_container_is_hardened(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            if name != "api":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert service.get("read_only") is True, f"{name} has a writable root filesystem"
        assert service.get("cap_drop") == ["ALL"], f"{name} keeps capabilities"
        assert "no-new-privileges:true" in service.get("security_opt", []), f"{name} may gain privileges"
        assert service.get("mem_limit"), f"{name} has no memory limit"
    api_env = environment(services["api"])
    assert "${API_KEYS:?" in api_env["API_KEYS"], "compose must refuse to start the API without keys"
    flower = services["flower"]
    assert "${FLOWER_BASIC_AUTH:?" in environment(flower)["FLOWER_BASIC_AUTH"]
    # No secret on a command line, where `ps` and `docker inspect` show it.
    for name in ("flower", "worker", "api", "redis"):
        argv = " ".join(map(str, [*services[name].get("entrypoint", []), *services[name].get("command", [])]))
        assert "REDIS_PASSWORD}" not in argv and "://" not in argv, f"{name}'s command line carries a URL"
    assert "${REDIS_PASSWORD:?" in environment(services["worker"])["CELERY_BROKER_URL"]


def test_worker_health_check_fails_when_the_heartbeat_is_missing_or_stale(compose: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    worker = compose["services"]["worker"]
    # Docker restarts only containers that exit; a wedged worker must exit by itself (its watchdog) to be replaced.
    assert worker["restart"] == "unless-stopped"
    assert worker["healthcheck"]["start_period"], "loading the model must not count against the worker"
    heartbeat = tmp_path / "iris-worker.alive"
    env = {"PATH": os.environ["PATH"], "WORKER_HEARTBEAT_FILE": str(heartbeat)}
    assert environment(worker)["WORKER_HEARTBEAT_FILE"].startswith("/tmp/")
    assert run_health_check(worker, env) != 0, "healthy without a heartbeat"
    heartbeat.touch()
    assert run_health_check(worker, env) == 0
    stale = time.time() - 60
    os.utime(heartbeat, (stale, stale))
    assert run_health_check(worker, env) != 0, "healthy with a heartbeat a minute old"


def test_compose_commands_serve_the_seed_example(compose: dict[str, Any], stack_env: dict[str, str],
                                                  procs: Processes, tmp_path: Path) -> None:
    services = compose["services"]
    queue = f"iris-compose-{uuid.uuid4().hex[:8]}"
    # What `docker compose` would see in its environment: nothing but a queue of this test's own.
    variables = {"IRIS_QUEUE": queue, **SECRETS}
    svc = {name: substitute(services[name], variables) for name in ("mlflow", "trainer", "worker", "api")}
    images = {name: Dockerfile(ROOT / s["build"]["dockerfile"]) for name, s in svc.items()}

    # Compose hostnames -> this machine: redis -> the test Redis (its DBs 14/15), mlflow -> a local server.
    mlflow_port, api_port = _free_port(), _free_port()
    broker, backend = stack_env["CELERY_BROKER_URL"], stack_env["CELERY_RESULT_BACKEND"]

    def localise(env: dict[str, str]) -> dict[str, str]:
        out = dict(env)
        for key, value in env.items():
            parts = urlsplit(value) if "://" in value else None
            if parts is None or parts.hostname not in ("redis", "mlflow"):
                continue
            if parts.hostname == "mlflow":
                assert parts.port == 8081, f"{key}={value}: the mlflow service listens on 8081"
                out[key] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{mlflow_port}"))
            else:
                assert parts.port == 6379 and parts.path in ("/0", "/1"), f"{key}={value}"
                out[key] = broker if parts.path == "/0" else backend
        return out

    def container_env(name: str, app_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in stack_env.items() if not k.startswith(("MLFLOW_", "PYTHON", "PORT", "TAG"))}
        env.update(images[name].env)
        if "VIRTUAL_ENV" in env:  # the image's venv, where its dependencies are, is this interpreter's here
            env["PATH"] = env["PATH"].replace(f"{env['VIRTUAL_ENV']}/bin", str(BIN))
            env["VIRTUAL_ENV"] = str(BIN.parent)
        env.update(localise(environment(svc[name])))
        env["HOME"] = str(tmp_path)
        if "WORKER_HEARTBEAT_FILE" in env:  # the container's /tmp is its own; here it is shared
            env["WORKER_HEARTBEAT_FILE"] = str(tmp_path / f"{name}.alive")
        if "PYTHONPATH" in env:
            env["PYTHONPATH"] = env["PYTHONPATH"].replace(images[name].workdir, str(app_dir))
        return env

    staged: dict[Path, set[Path]] = {}

    def stage(name: str) -> Path:
        app_dir = tmp_path / name / "app"
        app_dir.mkdir(parents=True)
        images[name].stage(app_dir)
        staged[app_dir] = set(app_dir.rglob("*"))
        return app_dir

    # The API first: it needs neither MLflow nor a model, and starting it now overlaps the slow parts.
    api_dir = stage("api")
    api_env = container_env("api", api_dir)
    # Loopback only: GUNICORN_BIND for gunicorn.conf.py, API_HOST for `python -m api` (granian).
    api_env.update(PORT=str(api_port), GUNICORN_BIND=f"127.0.0.1:{api_port}", API_HOST="127.0.0.1",
                   WEB_CONCURRENCY="1")
    assert not (api_dir / "worker").exists() and not (api_dir / "training").exists()
    procs.start("api", local_argv(container_argv(svc["api"], images["api"])), api_env, api_dir)

    # MLflow exactly as the compose service runs it, with its volumes under tmp_path and a private port.
    mlflow_home = tmp_path / "mlflow"
    mlflow_argv = [arg.replace("/mlflow/", f"{mlflow_home}/") for arg in container_argv(svc["mlflow"], None)]
    mlflow_argv[mlflow_argv.index("--host") + 1] = "127.0.0.1"
    mlflow_argv[mlflow_argv.index("--port") + 1] = str(mlflow_port)
    (mlflow_home / "db").mkdir(parents=True)
    (mlflow_home / "artifacts").mkdir()
    mlflow_env = {**container_env("mlflow", mlflow_home), **localise(environment(svc["mlflow"]))}
    procs.start("mlflow", local_argv(mlflow_argv), mlflow_env, mlflow_home)
    _wait(lambda: _get(f"http://127.0.0.1:{mlflow_port}/health")[0] == 200 or None, "MLflow /health", 60,
          procs, "mlflow")
    # The containers reach it as http://mlflow:8081: that Host header must pass MLflow's DNS-rebinding guard.
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status_with_host(mlflow_port, search, "mlflow:8081") == 200
    assert _status_with_host(mlflow_port, search, "elsewhere.example:8081") == 403

    # The one-shot trainer: trains, registers and promotes through the server, then exits 0.
    trainer_dir = stage("trainer")
    trainer_env = container_env("trainer", trainer_dir)
    assert trainer_env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{mlflow_port}"
    trainer = procs.start("trainer", local_argv(container_argv(svc["trainer"], images["trainer"])), trainer_env,
                          trainer_dir)
    try:
        code = trainer.wait(120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"trainer still running after 120s:\n{procs.log('trainer')}")
    assert code == 0, f"trainer exited {code}:\n{procs.log('trainer')}"
    assert "champion" in procs.log("trainer")

    # The worker, as compose runs it, plus a node name so this test can tell it from other workers.
    worker_dir = stage("worker")
    worker_env = container_env("worker", worker_dir)
    worker_argv = container_argv(svc["worker"], images["worker"])
    assert worker_argv[:4] == ["celery", "-A", "worker", "worker"] and queue in worker_argv
    node = f"compose-{uuid.uuid4().hex[:6]}"
    procs.start("worker", local_argv([*worker_argv, "-n", f"{node}@%h"]), worker_env, worker_dir)

    def ready() -> dict[str, Any] | None:
        status, body = _get(f"http://127.0.0.1:{api_port}/readyz")
        workers = body.get("data", {}).get("workers", {}) if status == 200 else {}
        return body if any(name.startswith(f"{node}@") for name in workers) else None

    body = _wait(ready, "API /readyz with the compose worker", 60, procs, "api", "worker", "mlflow")
    assert body["message"] == "success"

    # Compose passes API_KEYS to the API: no key, no answer.
    status, body = _post(f"http://127.0.0.1:{api_port}/v1/classify", SEED_EXAMPLE)
    assert status == 401, body
    status, body = _post(f"http://127.0.0.1:{api_port}/v1/classify", SEED_EXAMPLE,
                         headers={"X-API-Key": SECRETS["API_KEYS"]})
    assert status == 200, body
    assert body["message"] == "success" and body["error"] is None
    assert body["version"] == environment(svc["api"])["TAG"]
    assert body["data"]["pred_label"] == "Iris-virginica"
    assert body["data"]["model_version"] == "1"
    # The worker as compose runs it keeps its heartbeat fresh, so its health check passes.
    assert run_health_check(svc["worker"], worker_env) == 0, "the serving worker reports unhealthy"

    # The images' WORKDIR belongs to root and the processes run as a non-root user: they must not write there.
    procs.stop_all()
    for app_dir, files in staged.items():
        assert set(app_dir.rglob("*")) == files, f"{app_dir.parent.name} wrote into its WORKDIR"

    # Leave no queue behind in the shared test broker.
    client = redis.Redis.from_url(broker)
    client.delete(queue, f"_kombu.binding.{queue}")
    client.close()
