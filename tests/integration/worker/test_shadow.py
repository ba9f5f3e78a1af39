"""A real worker with SHADOW_SAMPLE=1 follows @challenger, shadows every answered message with it without changing
an answer, counts the agreement in /metrics and Redis, and promote-challenger moves @champion on that count."""

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import mlflow
import mlflow.sklearn
import mlflow.tracking._tracking_service.utils as tracking_utils
import pandas as pd
import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from api import create_app
from api.broker.readiness import served_models
from shared.schemas import FEATURES, LABELS
from shared.settings import get_settings
from tests.helpers import WorkerProcess, free_port, make_settings
from tests.integration.worker.swap_stack import OwnModel, register_bad_version, reload_and_wait
from training.promote_challenger import main as promote_main

pytestmark = pytest.mark.integration

CHALLENGER = "challenger"
TTL = 600
ROWS = [dict(zip(FEATURES, map(float, row), strict=True)) for row in load_iris().data[::6]]  # 25 rows, all classes


@pytest.fixture(scope="module")
def model(mlflow_store: str) -> Iterator[OwnModel]:
    """A registered model of this module's own, version 1 as champion."""
    with pytest.MonkeyPatch.context() as patch:  # OwnModel sets MLflow's process-wide tracking URI
        patch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        yield OwnModel(mlflow_store)


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str], redis_base: str, model: OwnModel) -> dict[str, str]:
    # DB 13: no shared worker listens there, so /readyz lists this module's worker alone.
    return {**stack_env, "CELERY_BROKER_URL": f"{redis_base}/13", "IRIS_MODEL_NAME": model.name,
            "IRIS_QUEUE": f"shadow-{uuid.uuid4().hex[:8]}", "MODEL_POLL_SECONDS": "3600", "SHADOW_SAMPLE": "1",
            "SHADOW_STATS_TTL_SECONDS": str(TTL), "WORKER_METRICS_PORT": str(free_port())}


@pytest.fixture(scope="module")
def shadow_worker(env: dict[str, str]) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(env, queue=env["IRIS_QUEUE"]).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(env: dict[str, str], shadow_worker: WorkerProcess) -> FlaskClient:
    return create_app(make_settings(env)).test_client()


@pytest.fixture(scope="module")
def champion_answers(api: FlaskClient) -> list[dict[str, Any]]:
    """What the champion answers ROWS with, before any challenger is set."""
    return classify(api)


def classify(api: FlaskClient) -> list[dict[str, Any]]:
    answers = []
    for row in ROWS:
        resp = api.post("/v1/classify", json=row)
        assert resp.status_code == 200, resp.get_json()
        data = resp.get_json()["data"]
        answers.append({key: data[key] for key in ("pred_label", "pred_confidence", "model_version")})
    return answers


def set_challenger(model: OwnModel, version: str, env: dict[str, str], worker: WorkerProcess) -> dict[str, Any]:
    """Point @challenger at ``version`` and make the worker check now; return the challenger it reports."""
    model.client.set_registered_model_alias(model.name, CHALLENGER, version)
    info = reload_and_wait(env, worker)
    assert info["model_version"] == "1"  # the champion never moves with the challenger
    return dict(info["challenger"])


def register_rotated_version(model: OwnModel) -> str:
    """Register a pipeline trained with the labels rotated: it meets the contract and disagrees on almost every row."""
    iris = load_iris()
    rotated = [LABELS[(t + 1) % 3] for t in iris.target]
    pipeline = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    pipeline.fit(pd.DataFrame(iris.data, columns=list(FEATURES)), rotated)
    experiment = model.client.get_run(model.run_id).info.experiment_id
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=model.name,
                                        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                                        pip_requirements=["scikit-learn", "skops"])
    assert info.registered_model_version is not None
    return str(info.registered_model_version)


def worker_metrics(env: dict[str, str]) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def shadow_figures(env: dict[str, str]) -> dict[str, float]:
    """Return the worker's iris_shadow_predictions_total by agree label."""
    return {s.labels["agree"]: s.value for family in text_string_to_metric_families(worker_metrics(env))
            for s in family.samples if s.name == "iris_shadow_predictions_total"}


def stored_agreement(env: dict[str, str], champion: str, challenger: str, rows: int) -> tuple[int, int, int]:
    """Wait until the pair's Redis hash holds ``rows`` rows (the workers add theirs every second); return rows,
    agreed and the key's TTL."""
    key = make_settings(env, iris_model_name=env["IRIS_MODEL_NAME"]).shadow_stats_key(champion, challenger)
    client = redis.Redis.from_url(env["CELERY_RESULT_BACKEND"])
    deadline = time.monotonic() + 10
    while int(client.hget(key, "rows") or 0) < rows:
        assert time.monotonic() < deadline, client.hgetall(key)
        time.sleep(0.1)
    return int(client.hget(key, "rows") or 0), int(client.hget(key, "agree") or 0), int(client.ttl(key))


def readyz_models(api: FlaskClient, expected: dict[str, list[str]], model: OwnModel) -> dict[str, Any]:
    """Probe /readyz until its workers serving ``model`` list ``expected`` (other tests' workers may answer on this
    broker too; the reading is reused for 2 s); return its data."""
    deadline = time.monotonic() + 10
    while True:
        resp = api.get("/readyz")
        data: dict[str, Any] = resp.get_json()["data"] if resp.status_code == 200 else {}
        ours = {(role, version) for role, name, version in served_models(data.get("workers", {}))
                if name == model.name}
        listed = {role: sorted(v for r, v in ours if r == role) for role in ("champion", "challenger")}
        if listed == expected and all(set(expected[r]) <= set(data["models"][r]) for r in expected):
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.2)


def test_a_challenger_that_breaks_the_contract_is_refused_and_reported_while_the_champion_answers(
        model: OwnModel, env: dict[str, str], shadow_worker: WorkerProcess, api: FlaskClient,
        champion_answers: list[dict[str, Any]]) -> None:
    assert {a["model_version"] for a in champion_answers} == {"1"}
    readyz_models(api, {"champion": ["1"], "challenger": []}, model)  # shadowing on, no @challenger yet
    short = register_bad_version(model, "three_features")
    challenger = set_challenger(model, short, env, shadow_worker)
    assert "model_version" not in challenger
    assert challenger["last_failure"]["version"] == short
    assert "model expects features" in challenger["last_failure"]["error"]
    assert challenger["counters"]["load_failures"] == 1
    assert classify(api) == champion_answers
    assert "iris_challenger_load_failures_total 1.0" in worker_metrics(env)


def test_the_challenger_shadows_every_answer_unchanged_and_promotion_follows_its_agreement(
        model: OwnModel, env: dict[str, str], shadow_worker: WorkerProcess, api: FlaskClient,
        champion_answers: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    n = len(ROWS)
    # A challenger that disagrees: the answers stay the champion's, and the disagreement is counted.
    rotated = register_rotated_version(model)
    assert set_challenger(model, rotated, env, shadow_worker)["model_version"] == rotated
    before = shadow_figures(env)
    assert classify(api) == champion_answers
    rows, agreed, ttl = stored_agreement(env, "1", rotated, n)
    assert rows == n and agreed <= n // 10 and 0 < ttl <= TTL
    after = shadow_figures(env)
    assert after.get("false", 0) - before.get("false", 0) == n - agreed
    data = readyz_models(api, {"champion": ["1"], "challenger": [rotated]}, model)
    assert data["workers"][shadow_worker.hostname]["challenger"]["shadow"]["disagreed"] >= n - agreed

    for name, value in (("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"]), ("IRIS_MODEL_NAME", model.name),
                        ("CELERY_RESULT_BACKEND", env["CELERY_RESULT_BACKEND"]), ("KEY_PREFIX", env["KEY_PREFIX"])):
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    assert promote_main(["--min-rows", str(n)]) == 1
    assert "agreed with the champion on" in capsys.readouterr().err
    assert model.champion() == "1"

    # The same pipeline registered again agrees on every row: promote-challenger moves @champion to it.
    twin = model.add_version()
    assert set_challenger(model, twin, env, shadow_worker)["model_version"] == twin
    assert classify(api) == champion_answers
    assert stored_agreement(env, "1", twin, n)[:2] == (n, n)
    assert shadow_figures(env)["true"] - after.get("true", 0) == n
    readyz_models(api, {"champion": ["1"], "challenger": [twin]}, model)
    assert promote_main(["--min-rows", str(n)]) == 0  # what make promote-challenger runs, in this process
    assert capsys.readouterr().out.startswith(f"{model.name}@champion moved from version 1 to {twin}, which agreed on "
                                              f"100.00% of {n} shadowed rows; @{CHALLENGER} removed;")
    assert model.champion() == twin
    assert model.client.get_model_version(model.name, twin).tags["previous_champion"] == "1"  # make rollback's record

    # The workers follow: the twin answers, and the challenger is gone without a restart.
    info = reload_and_wait(env, shadow_worker)
    assert info["model_version"] == twin and "model_version" not in info["challenger"]
    assert {a["model_version"] for a in classify(api)} == {twin}
    readyz_models(api, {"champion": [twin], "challenger": []}, model)
    shadow_worker.stop()
    events = [json.loads(line).get("event") for line in shadow_worker.stderr().splitlines() if line.startswith("{")]
    assert events.count("challenger_refused") == 1  # one line for the version that broke the contract
    assert events.count("challenger_removed") == 1
