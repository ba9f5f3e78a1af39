"""Live model swaps under load, through the real API and worker: no request fails, one version per answer."""

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow.tracking._tracking_service.utils as tracking_utils
import psutil
import pytest

from shared import tasks
from shared.celery_app import create_celery
from shared.reload import request_reload
from tests.helpers import ROOT, WorkerProcess, make_settings
from tests.integration.worker.swap_stack import (
    ALIAS,
    OwnModel,
    PreforkWorker,
    Traffic,
    api_process,
    get_json,
    register_bad_version,
    reload_and_wait,
)

pytestmark = pytest.mark.integration

# The worker's poll interval when a test wants only the reload command to trigger checks.
NEVER = "3600"


@pytest.fixture
def model(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> OwnModel:
    """A registered model of this test's own, version 1 as champion, in the session's store."""
    # OwnModel sets MLflow's process-wide tracking URI; leave it as it was afterwards.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    return OwnModel(mlflow_store)


def swap_env(lonely_env: dict[str, str], model: OwnModel, poll_seconds: str) -> dict[str, str]:
    return {**lonely_env, "IRIS_MODEL_NAME": model.name, "MODEL_POLL_SECONDS": poll_seconds,
            "IRIS_QUEUE": f"swap-{uuid.uuid4().hex[:8]}"}


@contextmanager
def stack(env: dict[str, str], prefork: bool = False) -> Iterator[tuple[WorkerProcess, str]]:
    """Start a worker (solo pool, or prefork) and the API on ``env``'s queue; yield the worker and the API's URL."""
    worker = (PreforkWorker if prefork else WorkerProcess)(env, queue=env["IRIS_QUEUE"]).start()
    try:
        with api_process(env) as url:
            yield worker, url
    finally:
        worker.stop()


def send_reload(env: dict[str, str], worker: WorkerProcess) -> None:
    app = create_celery(make_settings(env))
    try:
        assert worker.hostname in request_reload(app)
    finally:
        app.close()


def readyz_shows(url: str, hostname: str, version: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll /readyz until it names ``version`` for the worker; return that worker's info."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = get_json(f"{url}/readyz")
        info = body.get("data", {}).get("workers", {}).get(hostname, {}) if status == 200 else {}
        if info.get("model_version") == version:
            return info
        assert time.monotonic() < deadline, f"/readyz still shows {info.get('model_version')}, not {version}"
        time.sleep(0.2)


@pytest.mark.parametrize(("trigger", "poll_seconds"), [("reload command", NEVER), ("polling", "1")])
def test_a_promoted_version_answers_every_request_within_seconds_and_none_fails(
    trigger: str, poll_seconds: str, model: OwnModel, lonely_env: dict[str, str]
) -> None:
    env = swap_env(lonely_env, model, poll_seconds)
    with stack(env) as (worker, url), Traffic(url) as traffic:
        traffic.wait_for_answers(50)
        new = model.add_version()
        moved = model.promote(new)
        if trigger == "reload command":
            send_reload(env, worker)
        last_old = traffic.wait_until_all(new)
        info = readyz_shows(url, worker.hostname, new)
        shown = time.monotonic()
    assert traffic.failures == []
    assert {a.version for a in traffic.answers} == {"1", new}
    assert traffic.last_answer_not(new) == last_old  # nothing from version 1 arrived after the switch
    assert info["counters"]["swaps"] == 1 and info["counters"]["load_failures"] == 0
    # Polling every second, a later check may already have found the alias where the swap left it.
    assert info["last_check"]["outcome"] in ({"swapped"} if trigger == "reload command" else {"swapped", "unchanged"})
    assert str(info["last_check"]["alias_version"]) == new
    print(f"\n[{trigger}] {traffic.summary()}; every answer from "
          f"version {new} {last_old - moved:.2f} s after the alias moved; /readyz showed it after "
          f"{shown - moved:.2f} s")


def test_a_version_that_breaks_the_contract_is_refused_and_the_old_one_keeps_serving(
    model: OwnModel, lonely_env: dict[str, str]
) -> None:
    env = swap_env(lonely_env, model, NEVER)
    with stack(env) as (worker, url), Traffic(url, threads=3) as traffic:
        traffic.wait_for_answers(20)
        short = register_bad_version(model, "three_features")
        model.promote(short)
        info = reload_and_wait(env, worker)
        assert info["model_version"] == "1"
        assert info["counters"]["load_failures"] == 1 and info["counters"]["swaps"] == 0
        assert info["last_failure"]["version"] == short
        assert "model expects features" in info["last_failure"]["error"]

        pyfunc = register_bad_version(model, "pyfunc")
        model.promote(pyfunc)
        info = reload_and_wait(env, worker)
        assert info["model_version"] == "1" and info["counters"]["load_failures"] == 2
        assert info["last_failure"]["version"] == pyfunc and "sklearn" in info["last_failure"]["error"]
        traffic.wait_for_answers(len(traffic.answers) + 20)
        status, ready = get_json(f"{url}/readyz")
    assert status == 200 and ready["data"]["workers"][worker.hostname]["model_version"] == "1"
    assert traffic.failures == []
    assert {a.version for a in traffic.answers} == {"1"}
    lines = [json.loads(line) for line in worker.stderr().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("event") == "model_refused"]
    assert [(line["refused_version"], line["level"]) for line in refused] == [(short, "ERROR"), (pyfunc, "ERROR")]


def test_rollback_moves_the_alias_back_and_the_workers_follow(model: OwnModel, lonely_env: dict[str, str]) -> None:
    env = swap_env(lonely_env, model, "2")
    with stack(env) as (worker, url), Traffic(url) as traffic:
        traffic.wait_for_answers(30)
        new = model.add_version()
        model.promote(new)
        reload = subprocess.run([sys.executable, "-m", "shared.reload"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
        assert reload.returncode == 0, reload.stderr
        assert f"{worker.hostname}: serving {model.name} version {new} (swaps 1, load failures 0)" in reload.stdout
        traffic.wait_until_all(new)

        rollback = subprocess.Popen([sys.executable, "-m", "training.rollback"], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while model.champion() != "1":  # watch the registry, to time the workers from the alias move itself
            assert rollback.poll() in (None, 0), rollback.communicate()
            time.sleep(0.02)
        moved = time.monotonic()
        out, err = rollback.communicate(timeout=60)
        assert rollback.returncode == 0, err
        assert out.startswith(f"{model.name}@{ALIAS} moved back from version {new} to 1;")
        last_new = traffic.wait_until_all("1")
        info = readyz_shows(url, worker.hostname, "1")
    assert traffic.failures == []
    assert info["counters"]["swaps"] == 2
    print(f"\n[rollback, polling every 2 s] {traffic.summary()}; every answer from version 1 "
          f"{last_new - moved:.2f} s after training.rollback moved the alias")


def test_a_prefork_worker_replaces_its_children_so_they_serve_the_new_version(
    model: OwnModel, lonely_env: dict[str, str]
) -> None:
    env = swap_env(lonely_env, model, NEVER)
    with stack(env, prefork=True) as (worker, url), Traffic(url) as traffic:
        traffic.wait_for_answers(50)
        assert worker.proc is not None
        before = {child.pid for child in psutil.Process(worker.proc.pid).children()}
        assert len(before) == 2
        new = model.add_version()
        moved = model.promote(new)
        send_reload(env, worker)
        last_old = traffic.wait_until_all(new)
        # A replaced child exits while its successor starts: wait for the pool to settle at two new children.
        deadline = time.monotonic() + 30
        while True:
            after = {child.pid for child in psutil.Process(worker.proc.pid).children()}
            if (len(after) == 2 and not before & after) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        app = create_celery(make_settings(env))
        try:
            [reply] = app.control.broadcast(tasks.MODEL_INFO_COMMAND, reply=True, timeout=2,
                                            destination=[worker.hostname])
        finally:
            app.close()
    assert traffic.failures == []
    assert reply[worker.hostname]["model_version"] == new
    assert len(after) == 2 and not before & after, (before, after)  # both children replaced by new forks
    print(f"\n[prefork, 2 children] {traffic.summary()}; every answer from version {new} "
          f"{last_old - moved:.2f} s after the alias moved")
