"""Whoever writes to the registry cannot run code in a worker: a version that would, promoted and reloaded, is
refused and counted while the served version keeps answering every request."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow.tracking._tracking_service.utils as tracking_utils
import pytest

from tests.helpers import ROOT, free_port
from tests.integration.worker.swap_stack import (
    UNTRUSTED_KINDS,
    OwnModel,
    Traffic,
    register_untrusted_version,
    reload_and_wait,
    scrape,
    worker_and_api,
)

pytestmark = pytest.mark.integration

FAILURES = "iris_model_load_failures_total"
# Why each version is refused: parts of its ModelLoadError.
UNPICKLE = "; the workers load skops only and never unpickle"
OFF_THE_LIST = "its skops file names what the workers' allowlist does not hold: "
REASONS = {
    "pickle": ("its sklearn flavour is saved as 'pickle'" + UNPICKLE,),
    "cloudpickle": ("its sklearn flavour is saved as 'cloudpickle'" + UNPICKLE,),
    "skops_class": (OFF_THE_LIST + "'tests.model_traps.SkopsTrap'",),
    "skops_forest": (OFF_THE_LIST, "'sklearn.ensemble._forest.RandomForestClassifier'"),
}


def says_why(kind: str, text: str) -> bool:
    return all(part in text for part in REASONS[kind])


@pytest.fixture
def model(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> OwnModel:
    """A registered model of this test's own, version 1 (the trained champion) as champion, in the session's store."""
    # OwnModel sets MLflow's process-wide tracking URI; leave it as it was afterwards.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    return OwnModel(mlflow_store)


def test_a_version_that_would_run_code_is_refused_counted_and_the_served_one_keeps_answering(
    model: OwnModel, lonely_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**lonely_env, "IRIS_MODEL_NAME": model.name, "MODEL_POLL_SECONDS": "3600",  # only reloads check
           "IRIS_QUEUE": f"trust-{uuid.uuid4().hex[:8]}", "WORKER_METRICS_PORT": str(port)}
    markers = {kind: tmp_path / f"{kind}.ran" for kind in UNTRUSTED_KINDS}
    refused: dict[str, str] = {}
    with worker_and_api(env) as (worker, url), Traffic(url, threads=3) as traffic:
        traffic.wait_for_answers(20)
        before = scrape(port, FAILURES)
        for kind in UNTRUSTED_KINDS[:-1]:
            refused[kind] = version = register_untrusted_version(model, kind, markers[kind])
            model.promote(version)
            info = reload_and_wait(env, worker)
            assert info["model_version"] == "1", (kind, info)
            assert info["last_failure"]["version"] == version
            assert says_why(kind, info["last_failure"]["error"]), info["last_failure"]
            assert not markers[kind].exists(), f"the {kind} version ran code in the worker"
        # The last one as an operator asks: make reload.
        kind = UNTRUSTED_KINDS[-1]
        refused[kind] = version = register_untrusted_version(model, kind, markers[kind])
        model.promote(version)
        reload = subprocess.run([sys.executable, "-m", "shared.reload"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
        assert reload.returncode == 0, reload.stderr
        assert (f"{worker.hostname}: serving {model.name} version 1 (swaps 0, load failures 4); refused version "
                f"{version}: cannot load models:/{model.name}/{version} from ") in reload.stdout, reload.stdout
        assert says_why(kind, reload.stdout), reload.stdout
        traffic.wait_for_answers(len(traffic.answers) + 20)
        after = scrape(port, FAILURES)
    assert after - before == len(UNTRUSTED_KINDS)
    assert [kind for kind, marker in markers.items() if marker.exists()] == []
    assert traffic.failures == []
    assert {a.version for a in traffic.answers} == {"1"}
    lines = [json.loads(line) for line in worker.stderr().splitlines() if line.startswith("{")]
    logged = [(line["refused_version"], line["level"], line["model_version"]) for line in lines
              if line.get("event") == "model_refused"]
    assert logged == [(refused[kind], "ERROR", "1") for kind in UNTRUSTED_KINDS]
    print(f"\n[untrusted versions refused] {traffic.summary()}")
