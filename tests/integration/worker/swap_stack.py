"""Helpers for the live-swap tests: a registered model of the test's own, the API process, and steady traffic."""

import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import pandas as pd
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shared.celery_app import create_celery
from shared.reload import request_reload, wait_for_checks
from shared.schemas import FEATURES, LABELS
from tests.helpers import SEED_EXAMPLE, WorkerProcess, api_server, make_settings
from tests.model_traps import SkopsTrap, UnpickleTrap
from training.registry import promote

ALIAS = "champion"


class OwnModel:
    """A registered model of one test's own in the session's MLflow store, whose versions copy the champion's."""

    def __init__(self, tracking_uri: str) -> None:
        # MLflow resolves a version's models:/m-... source through the process-wide tracking URI; the caller
        # restores it afterwards (see the test's fixture).
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.name = f"iris-swap-{uuid.uuid4().hex[:8]}"
        champion = self.client.get_model_version_by_alias("iris-classifier", ALIAS)
        self.source, self.run_id = champion.source, champion.run_id
        self.client.create_registered_model(self.name)
        promote(self.client, self.name, ALIAS, self.add_version())

    def add_version(self) -> str:
        """Register another version of the trained champion; return its number."""
        return str(self.client.create_model_version(self.name, self.source, run_id=self.run_id).version)

    def promote(self, version: str) -> float:
        """Move the alias as the promotion gate does; return the monotonic time the move completed."""
        promote(self.client, self.name, ALIAS, version)
        return time.monotonic()

    def champion(self) -> str:
        return str(self.client.get_model_version_by_alias(self.name, ALIAS).version)


class PreforkWorker(WorkerProcess):
    """A worker with a prefork pool of two children (WorkerProcess's own command line pins the solo pool)."""

    def __init__(self, env: dict[str, str], queue: str = "iris") -> None:
        # WORKER_POOL, not --pool: Celery takes `--pool prefork`, its default, to mean "the configured pool".
        super().__init__({**env, "WORKER_POOL": "prefork", "WORKER_CONCURRENCY": "2"}, queue=queue)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue, "-n", f"{self.name}@%h",
                "--without-gossip", "--without-mingle", "-l", "warning"]


@contextmanager
def api_process(env: dict[str, str]) -> Iterator[str]:
    """Run the API as gunicorn does (two processes, threads) on a free port; yield its base URL."""
    with api_server(env, BATCH_MAX_WAIT_MS="5") as url:
        yield url


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@dataclass(frozen=True)
class Answer:
    thread: int
    sent: float
    done: float
    version: str | None  # None when the request failed
    error: str | None


class Traffic:
    """Threads that POST /v1/classify back to back until stopped, recording every answer."""

    def __init__(self, url: str, threads: int = 6) -> None:
        self.url = f"{url}/v1/classify"
        self.threads = threads
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Traffic":
        for thread in self._workers:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def _run(self, index: int) -> None:
        body = json.dumps(SEED_EXAMPLE).encode()
        while not self._stop.is_set():
            sent = time.monotonic()
            version, error = None, None
            try:
                req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as resp:
                    version = json.loads(resp.read())["data"]["model_version"]
            except Exception as exc:  # every failure is recorded, never retried
                error = f"{type(exc).__name__}: {exc}"
            self.answers.append(Answer(index, sent, time.monotonic(), version, error))

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.version is None]

    def summary(self) -> str:
        """Describe the traffic: requests, rate, failures and the slowest answer."""
        answers = list(self.answers)
        span = max(a.done for a in answers) - min(a.sent for a in answers)
        slowest = max(a.done - a.sent for a in answers)
        return (f"{len(answers)} requests at {len(answers) / span:.0f}/s from {self.threads} threads, "
                f"{len(self.failures)} failed, slowest {slowest * 1000:.0f} ms")

    def last_answer_not(self, version: str) -> float:
        """Return when the last answer from another version than ``version`` arrived (0 if none did)."""
        return max((a.done for a in list(self.answers) if a.version not in (None, version)), default=0.0)

    def wait_until_all(self, version: str, timeout: float = 60.0, settle: int = 5) -> float:
        """Wait until every thread got ``settle`` answers from ``version`` sent after the last answer from any
        other (so no older request is in flight); return when that last other answer arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last_other = self.last_answer_not(version)
            after = [a for a in list(self.answers) if a.sent > last_other]
            per_thread = {i: sum(1 for a in after if a.thread == i and a.version == version)
                          for i in range(self.threads)}
            if min(per_thread.values()) >= settle:
                return last_other
            time.sleep(0.05)
        raise AssertionError(f"not every answer came from version {version} within {timeout} s; "
                             f"failures: {self.failures[:3]}")

    def wait_for_answers(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers) < count:
            assert time.monotonic() < deadline, f"only {len(self.answers)} answers in {timeout} s"
            time.sleep(0.05)


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model with no sklearn flavour: whatever it predicts, the workers cannot serve it."""

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        return ["Iris-setosa"] * len(model_input)


def register_bad_version(model: OwnModel, kind: str) -> str:
    """Register a version the workers must refuse: ``three_features`` (sklearn) or ``pyfunc`` (no sklearn flavour).

    """
    experiment = model.client.get_run(model.run_id).info.experiment_id
    with mlflow.start_run(experiment_id=experiment):
        if kind == "three_features":
            iris = load_iris()
            frame = pd.DataFrame(iris.data, columns=list(FEATURES))[list(FEATURES[:3])]
            pipeline = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
            pipeline.fit(frame, [LABELS[t] for t in iris.target])
            info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=model.name,
                                            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                                            pip_requirements=["scikit-learn", "skops"])
        else:
            info = mlflow.pyfunc.log_model(name="model", python_model=ConstantModel(),
                                           registered_model_name=model.name, pip_requirements=["mlflow"])
    assert info.registered_model_version is not None
    return str(info.registered_model_version)



@contextmanager
def worker_and_api(env: dict[str, str]) -> Iterator[tuple[WorkerProcess, str]]:
    """Start a solo worker and the API on ``env``'s queue; yield the worker and the API's URL."""
    worker = WorkerProcess(env, queue=env["IRIS_QUEUE"]).start()
    try:
        with api_process(env) as url:
            yield worker, url
    finally:
        worker.stop()


def reload_and_wait(env: dict[str, str], worker: WorkerProcess) -> dict[str, Any]:
    """Send the reload command as make reload does; return the worker's model info once it has checked."""
    app = create_celery(make_settings(env))
    try:
        tickets = request_reload(app)
        assert worker.hostname in tickets, tickets
        return wait_for_checks(app, {worker.hostname: tickets[worker.hostname]}, 30.0)[worker.hostname]
    finally:
        app.close()


def scrape(port: int, name: str) -> float:
    """Return one unlabelled figure from a worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in the scrape:\n{text}"
    return float(found[1])


UNTRUSTED_KINDS = ("pickle", "cloudpickle", "skops_class", "skops_forest")


def register_untrusted_version(model: OwnModel, kind: str, marker: Path) -> str:
    """Register a version a worker must refuse however its MLmodel vouches for it; return its number.

    ``pickle`` and ``cloudpickle`` create ``marker`` when unpickled. ``skops_class`` is a skops file of SkopsTrap,
    which creates ``marker`` when built, with its MLmodel declaring that class trusted. ``skops_forest`` is a
    working RandomForestClassifier that skops trusts by default, its tree type declared trusted in MLmodel, and
    off the workers' allowlist.
    """
    experiment = model.client.get_run(model.run_id).info.experiment_id
    options: dict[str, Any] = {"serialization_format": kind, "pip_requirements": ["scikit-learn"]}
    estimator: Any = UnpickleTrap(marker)
    if kind == "skops_class":
        estimator = SkopsTrap(marker)
        options = {"serialization_format": "skops", "pip_requirements": ["scikit-learn", "skops"],
                   "skops_trusted_types": [f"{SkopsTrap.__module__}.{SkopsTrap.__qualname__}"]}
    elif kind == "skops_forest":
        from sklearn.ensemble import RandomForestClassifier

        iris = load_iris()
        estimator = RandomForestClassifier(n_estimators=5, random_state=0).fit(
            pd.DataFrame(iris.data, columns=list(FEATURES)), [LABELS[t] for t in iris.target])
        options = {"serialization_format": "skops", "pip_requirements": ["scikit-learn", "skops"],
                   "skops_trusted_types": ["sklearn.tree._tree.Tree"]}
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(estimator, name="model", registered_model_name=model.name, **options)
    if kind == "skops_class":
        # MLflow test-loads a skops file with the declared types as it saves it, in this process: the trap
        # fired here, which shows it works. Clear it, so only a worker that builds the class can bring it back.
        assert marker.exists(), "the skops trap did not fire when MLflow test-loaded it"
        marker.unlink()
    assert info.registered_model_version is not None
    return str(info.registered_model_version)
