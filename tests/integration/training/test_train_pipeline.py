"""Train against a real MLflow sqlite store in tmp_path and check the registry, gate and CLI end to end."""

from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.sklearn
import mlflow.tracking._tracking_service.utils as tracking_utils
import mlflow.tracking.fluent as fluent
import pandas as pd
import pytest
from mlflow import MlflowClient

from shared.schemas import FEATURES, LABELS
from shared.settings import get_settings
from training.registry import F1_KEY, get_champion, promote, promote_if_better
from training.train import main

pytestmark = pytest.mark.integration

NAME = "iris-classifier"
ALIAS = "champion"
SEED_EXAMPLE = {"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """Point settings and MLflow at a fresh sqlite store in tmp_path and return a client for it."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.chdir(tmp_path)  # the default artifact root is ./mlruns, relative to the cwd
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    # Training sets MLflow's process-wide tracking URI and active experiment; restore them afterwards so
    # this store does not leak into other tests.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    get_settings.cache_clear()
    yield MlflowClient(tracking_uri=uri)
    get_settings.cache_clear()


def _versions(client: MlflowClient) -> list[str]:
    return sorted((str(v.version) for v in client.search_model_versions(f"name='{NAME}'")), key=int)


def _champion_version(client: MlflowClient) -> str:
    champion = get_champion(client, NAME, ALIAS)
    assert champion is not None
    return str(champion.version)


def test_get_champion_is_none_without_model_or_alias(client: MlflowClient) -> None:
    assert get_champion(client, NAME, ALIAS) is None
    client.create_registered_model(NAME)
    assert get_champion(client, NAME, ALIAS) is None


def test_train_register_gate_and_if_missing(client: MlflowClient, capsys: pytest.CaptureFixture[str]) -> None:
    # An empty store: --if-missing must train.
    assert main(["--if-missing", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"registered {NAME} version 1 (holdout macro-F1 ")
    assert line.endswith(f"no champion yet, {NAME}@{ALIAS} now points to version 1")
    assert _versions(client) == ["1"]
    assert _champion_version(client) == "1"

    v1 = client.get_model_version(NAME, "1")
    run = client.get_run(v1.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert {"cv_f1_macro", "holdout_accuracy", F1_KEY} <= metrics.keys()
    assert metrics[F1_KEY] >= 0.9
    assert float(v1.tags[F1_KEY]) == pytest.approx(metrics[F1_KEY], abs=1e-6)
    assert {"clf__C", "clf__class_weight", "seed", "test_size", "cv_folds"} <= run.data.params.keys()
    assert run.data.params["seed"] == "42"
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(v1.run_id)}

    model = mlflow.sklearn.load_model(f"models:/{NAME}@{ALIAS}")
    assert tuple(model.feature_names_in_) == FEATURES
    assert tuple(model.classes_) == LABELS
    row = pd.DataFrame([SEED_EXAMPLE], columns=list(FEATURES))
    assert model.predict(row).tolist() == ["Iris-virginica"]

    # Same data and seed give the same F1, and a tie promotes.
    assert main(["--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"registered {NAME} version 2 ")
    assert line.endswith(f"champion moved from version 1 ({metrics[F1_KEY]:.4f}) to 2")
    assert _versions(client) == ["1", "2"]
    assert _champion_version(client) == "2"

    # A worse candidate (version 1 offered with a low score) leaves the champion alone...
    kept = promote_if_better(client, NAME, ALIAS, "1", candidate_f1=0.5)
    assert not kept.promoted
    assert kept.champion_version == "2"
    assert kept.describe().endswith(
        f"champion stays at version 2 ({metrics[F1_KEY]:.4f} > 0.5000); use --force to override"
    )
    assert _champion_version(client) == "2"

    # ...unless forced.
    forced = promote_if_better(client, NAME, ALIAS, "1", candidate_f1=0.5, force=True)
    assert forced.promoted
    assert forced.describe().endswith("to 1 (forced)")
    assert _champion_version(client) == "1"
    promote(client, NAME, ALIAS, "2")

    # A champion exists: --if-missing registers nothing.
    assert main(["--if-missing", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"champion {NAME}@{ALIAS} is version 2; nothing to train"
    assert _versions(client) == ["1", "2"]
    assert _champion_version(client) == "2"
