"""A worker loads a model version as data: skops files of allowed types only, never a pickle, never the version's
own list of trusted types; nothing in a refused version runs."""

import ast
import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import mlflow.tracking._tracking_service.utils as tracking_utils
import numpy as np
import pandas as pd
import pytest
import skops.io
from mlflow.exceptions import MlflowException
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from shared.schemas import FEATURES, LABELS
from tests.helpers import ROOT, make_settings
from tests.model_traps import SkopsTrap, UnpickleTrap
from worker.model import (
    PICKLE_SWITCH,
    SKOPS_ALLOWED_TYPES,
    ModelLoadError,
    Registry,
    load_skops_file,
    ready_model,
    skops_file,
)


def load_skops_dir(model_dir: Path) -> Any:
    """Load the skops file a version's MLmodel names, as Registry.load does after downloading both."""
    return load_skops_file(model_dir / skops_file(model_dir))


REQUIREMENTS = ["scikit-learn", "skops"]  # explicit: MLflow would otherwise infer them in a subprocess


def type_name(kind: Any) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def iris() -> tuple[pd.DataFrame, list[str]]:
    data = load_iris()
    return pd.DataFrame(data.data, columns=list(FEATURES)), [LABELS[t] for t in data.target]


def trained_pipeline() -> Pipeline:
    """Fit the pipeline training/train.py builds, on the frame and labels it uses."""
    frame, labels = iris()
    return Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(frame, labels)


def save(model: Any, path: Path, serialization_format: str = "skops", **kwargs: Any) -> Path:
    """Save as the registry holds a version (MLmodel beside the data file) on the local disk, no server."""
    mlflow.sklearn.save_model(model, str(path), serialization_format=serialization_format,
                              pip_requirements=REQUIREMENTS, **kwargs)
    return path


def write_model_dir(path: Path, mlmodel: str, files: dict[str, bytes] | None = None) -> Path:
    path.mkdir()
    (path / "MLmodel").write_text(mlmodel)
    for name, content in (files or {}).items():
        (path / name).write_bytes(content)
    return path


def skops_bytes(schema: dict[str, Any]) -> bytes:
    """Build a skops file holding ``schema`` by hand, as an attacker may."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps({**schema, "protocol": 2, "_skops_version": "0.16.0"}))
    return buffer.getvalue()


def skops_nodes(state: Any) -> list[dict[str, Any]]:
    """Return every node of a skops schema."""
    if isinstance(state, list):
        return [node for item in state for node in skops_nodes(item)]
    if not isinstance(state, dict):
        return []
    found = [state] if "__loader__" in state else []
    return found + [node for value in state.values() for node in skops_nodes(value)]


SKLEARN_MLMODEL = """flavors:
  sklearn:
    pickled_model: {name}
    serialization_format: {format}
"""


def test_the_pipeline_training_saves_loads_and_answers_as_it_was_fitted(tmp_path: Path) -> None:
    pipeline = trained_pipeline()
    estimator = load_skops_dir(save(pipeline, tmp_path / "model"))
    frame, _ = iris()
    np.testing.assert_array_equal(estimator.predict_proba(frame), pipeline.predict_proba(frame))
    served = ready_model(estimator, "iris-classifier", "1", "run")
    assert served.predict_rows([[7.7, 2.6, 6.9, 2.3]])[0]["pred_label"] == "Iris-virginica"


def test_the_allowlist_holds_every_type_the_training_pipeline_names_and_skops_trusts_them_all(tmp_path: Path) -> None:
    path = save(trained_pipeline(), tmp_path / "model") / "model.skops"
    with zipfile.ZipFile(path) as archive:
        text = archive.read("schema.json").decode()
    named = {f"{node['__module__']}.{node['__class__']}" for node in skops_nodes(json.loads(text))}
    assert named == SKOPS_ALLOWED_TYPES  # minimal: each entry is used
    assert skops.io.get_untrusted_types(file=path) == []


@pytest.mark.parametrize("serialization_format", ["pickle", "cloudpickle"])
def test_a_pickled_version_is_refused_and_never_unpickled(tmp_path: Path, serialization_format: str) -> None:
    marker = tmp_path / "ran"
    model_dir = save(UnpickleTrap(marker), tmp_path / "model", serialization_format)
    with pytest.raises(ModelLoadError, match=f"saved as '{serialization_format}'.*never unpickle"):
        load_skops_dir(model_dir)
    assert not marker.exists()


def test_the_pickle_trap_is_live_under_mlflows_own_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the worker did before: MLflow's loader, with its switch on (its default), runs the pickle."""
    marker = tmp_path / "ran"
    model_dir = save(UnpickleTrap(marker), tmp_path / "model", "cloudpickle")
    monkeypatch.setenv(PICKLE_SWITCH, "true")
    mlflow.sklearn.load_model(str(model_dir))
    assert marker.exists()


def test_a_class_the_mlmodel_declares_trusted_is_refused_before_skops_builds_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # MLflow test-loads what it saves with the declared types: the trap fires then, which shows it is live.
    model_dir = save(SkopsTrap(marker), tmp_path / "model", skops_trusted_types=[type_name(SkopsTrap)])
    assert marker.exists()
    marker.unlink()
    assert type_name(SkopsTrap) in (model_dir / "MLmodel").read_text()
    with pytest.raises(ModelLoadError, match=re.escape(f"allowlist does not hold: '{type_name(SkopsTrap)}'")):
        load_skops_dir(model_dir)
    assert not marker.exists()


def test_a_function_the_mlmodel_declares_trusted_is_refused(tmp_path: Path) -> None:
    pipeline = Pipeline([("f", FunctionTransformer(func=os.system)), ("clf", LogisticRegression())])
    model_dir = save(pipeline, tmp_path / "model", skops_trusted_types=[type_name(os.system)])
    with pytest.raises(ModelLoadError, match="allowlist does not hold") as info:
        load_skops_dir(model_dir)
    assert type_name(os.system) in str(info.value)
    assert "sklearn.preprocessing._function_transformer.FunctionTransformer" in str(info.value)


def test_an_estimator_skops_trusts_by_default_is_refused_when_off_the_allowlist(tmp_path: Path) -> None:
    frame, labels = iris()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(frame, labels)
    model_dir = save(forest, tmp_path / "model", skops_trusted_types=["sklearn.tree._tree.Tree"])
    # skops alone would load it: it trusts every scikit-learn estimator and adds the declared types.
    assert skops.io.get_untrusted_types(file=model_dir / "model.skops") == ["sklearn.tree._tree.Tree"]
    with pytest.raises(ModelLoadError, match=re.escape("sklearn.ensemble._forest.RandomForestClassifier")):
        load_skops_dir(model_dir)


def test_a_node_kind_that_imports_more_than_its_type_is_refused_whatever_type_it_names(tmp_path: Path) -> None:
    # A MethodNode calls a method the file names on an object it builds; its own type here is on the allowlist.
    method = {"__class__": "str", "__module__": "builtins", "__loader__": "MethodNode",
              "content": {"func": "format", "obj": {"__class__": "str", "__module__": "builtins",
                                                    "__loader__": "JsonNode", "content": '"x"', "is_json": True}}}
    model_dir = write_model_dir(tmp_path / "model", SKLEARN_MLMODEL.format(name="model.skops", format="skops"),
                                {"model.skops": skops_bytes(method)})
    with pytest.raises(ModelLoadError, match="'MethodNode node'"):
        load_skops_dir(model_dir)


def test_a_pyfunc_only_version_is_refused_for_its_missing_sklearn_flavour(tmp_path: Path) -> None:
    mlmodel = "flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n    python_model: model.pkl\n"
    with pytest.raises(ModelLoadError, match=r"no sklearn flavour \(flavours: python_function\)"):
        load_skops_dir(write_model_dir(tmp_path / "model", mlmodel))


@pytest.mark.parametrize(("mlmodel", "reason"), [
    (SKLEARN_MLMODEL.replace("    serialization_format: {format}\n", "").format(name="model.pkl"),
     r"saved as pickle \(MLflow's default\)"),
    (SKLEARN_MLMODEL.format(name="../model.skops", format="skops"), "not a plain"),
    (SKLEARN_MLMODEL.format(name="/etc/model.skops", format="skops"), "not a plain"),
    (SKLEARN_MLMODEL.format(name="model.skops", format="skops"), "cannot be read: FileNotFoundError"),
    ("just text", "no sklearn flavour"),
])
def test_an_mlmodel_the_worker_cannot_trust_is_refused(tmp_path: Path, mlmodel: str, reason: str) -> None:
    with pytest.raises(ModelLoadError, match=reason):
        load_skops_dir(write_model_dir(tmp_path / "model", mlmodel))


def test_an_mlmodel_is_read_as_data_and_its_yaml_tags_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    mlmodel = f"flavors: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ModelLoadError, match="MLmodel file cannot be read: ConstructorError"):
        load_skops_dir(write_model_dir(tmp_path / "model", mlmodel))
    assert not marker.exists()


@pytest.fixture
def mlflow_globals(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Restore what building a Registry changes process-wide: MLflow's tracking URI and its pickle switch."""
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setenv(PICKLE_SWITCH, os.environ.get(PICKLE_SWITCH, "true"))
    return monkeypatch


def test_a_worker_forces_mlflows_pickle_switch_off_so_mlflows_loaders_refuse(
    tmp_path: Path, mlflow_globals: pytest.MonkeyPatch
) -> None:
    mlflow_globals.setenv(PICKLE_SWITCH, "true")
    Registry(make_settings({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns.db"}))
    assert os.environ[PICKLE_SWITCH] == "false"
    marker = tmp_path / "ran"
    model_dir = save(UnpickleTrap(marker), tmp_path / "model", "cloudpickle")
    with pytest.raises(MlflowException, match=PICKLE_SWITCH):
        mlflow.sklearn.load_model(str(model_dir))
    assert not marker.exists()


class FailingClient:
    """A registry client whose every call fails with a message quoting the tracking URI, as requests' errors may."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any) -> None:
            raise MlflowException(f"API request to {self.uri}/api/2.0/mlflow/{name} failed")
        return fail


@pytest.mark.parametrize("call", ["resolve", "load"])
def test_a_load_error_never_shows_the_tracking_uris_password(call: str, mlflow_globals: pytest.MonkeyPatch) -> None:
    uri = "http://iris:s3cret-pw@mlflow.internal:5000"
    registry = Registry(make_settings({"MLFLOW_TRACKING_URI": uri}))
    registry.client = FailingClient(uri)  # type: ignore[assignment]
    with pytest.raises(ModelLoadError) as info:
        registry.resolve() if call == "resolve" else registry.load("3")
    message = str(info.value)
    assert "s3cret-pw" not in message
    assert message.startswith("cannot load models:/iris-classifier")
    assert "http://iris:***@mlflow.internal:5000" in message
    assert "\n" not in message


# Modules that unpickle, MLflow's model loaders included (they unpickle whatever format MLmodel names).
UNPICKLERS = ("pickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "mlflow.sklearn", "mlflow.pyfunc")


def unpickler_uses(source: str) -> list[str]:
    """Return ``line: name`` for each import of an unpickler and each ``.load_model`` in Python source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and node.attr == "load_model":
            names = [ast.unparse(node)]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name.endswith("load_model")
                  or any(name == module or name.startswith(f"{module}.") for module in UNPICKLERS)]
    return found


def test_the_scan_finds_unpicklers_however_they_are_spelled() -> None:
    source = ("import pickle\nfrom mlflow import sklearn\nimport mlflow.pyfunc as pf\nfrom joblib import load\n"
              "m = mlflow.sklearn.load_model(uri)\nimport mlflow.artifacts\nfrom worker.model import Registry\n")
    assert unpickler_uses(source) == ["1: pickle", "2: mlflow.sklearn", "3: mlflow.pyfunc", "4: joblib.load",
                                      "5: mlflow.sklearn.load_model"]


def test_no_worker_module_imports_an_unpickler_or_calls_an_mlflow_load_model() -> None:
    found = [f"{path.relative_to(ROOT)}:{use}" for path in sorted((ROOT / "worker").rglob("*.py"))
             for use in unpickler_uses(path.read_text())]
    assert found == []
