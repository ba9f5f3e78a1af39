"""Each failure the registry, a skops file or a model's own code is known to raise becomes a one-line ModelLoadError;
a failure of any other type is not disguised as one."""

import functools
import io
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.tracking._tracking_service.utils as tracking_utils
import pandas as pd
import pytest
import requests
import skops.io
from mlflow.exceptions import MlflowException
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shared.schemas import FEATURES, LABELS
from tests.helpers import make_settings
from worker.model import PICKLE_SWITCH, ModelLoadError, Registry, load_skops_file, ready_model

URI = "http://mlflow.internal:5000"  # never reached: every client call is replaced


class Surprise(Exception):
    """A failure of a type none of the worker's tuples names."""


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A Registry whose client is replaced per test; what building it changes process-wide is restored after."""
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setenv(PICKLE_SWITCH, os.environ.get(PICKLE_SWITCH, "true"))
    return Registry(make_settings({"MLFLOW_TRACKING_URI": URI}))


class FailingClient:
    """A registry client whose every call raises ``failure``."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any) -> None:
            raise self.failure
        return fail


REGISTRY_FAILURES = [
    MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model with name=iris-classifier not found"),
    requests.ConnectionError("Max retries exceeded with url: /get-artifact"),
    FileNotFoundError(2, "No such file or directory", "/mlruns/1/models"),
]


@pytest.mark.parametrize("failure", REGISTRY_FAILURES, ids=lambda exc: type(exc).__name__)
@pytest.mark.parametrize("call", ["resolve", "load"])
def test_a_registry_error_of_each_named_type_becomes_a_one_line_load_error(
        registry: Registry, call: str, failure: Exception) -> None:
    registry.client = FailingClient(failure)  # type: ignore[assignment]
    with pytest.raises(ModelLoadError, match=f"^cannot load models:/iris-classifier.* from {URI}: ") as info:
        registry.resolve() if call == "resolve" else registry.load("3")
    assert info.value.__cause__ is failure and "\n" not in str(info.value)


class FoundClient:
    """A registry client that finds version 3 and its files, which the artifact download then fails to fetch."""

    def get_model_version(self, name: str, version: str) -> Any:
        return type("Version", (), {"run_id": "run-3"})()

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        return "s3://models/3/artifacts"


@pytest.mark.parametrize("failure", [
    ModuleNotFoundError("No module named 'botocore'"),  # s3:// without boto3 in the image
    ValueError("not enough values to unpack (expected 2, got 1)"),  # what MLflow raised for an http:// artifact URI
    MlflowException("The following failures occurred while downloading one or more artifacts"),
], ids=lambda exc: type(exc).__name__)
def test_an_artifact_store_the_worker_cannot_fetch_from_is_a_load_error(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    def download(**_: Any) -> str:
        raise failure

    registry.client = FoundClient()  # type: ignore[assignment]
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    with pytest.raises(ModelLoadError, match=r"^cannot load models:/iris-classifier/3 from ") as info:
        registry.load("3")
    assert info.value.__cause__ is failure


@pytest.mark.parametrize("call", ["resolve", "load"])
def test_a_registry_failure_of_an_unnamed_type_is_not_disguised_as_a_load_error(registry: Registry,
                                                                                call: str) -> None:
    registry.client = FailingClient(Surprise("a bug"))  # type: ignore[assignment]
    with pytest.raises(Surprise):
        registry.resolve() if call == "resolve" else registry.load("3")


# A skops file whose arrays are not what they say: what skops and numpy raise for each is named in SKOPS_ERRORS.

@functools.cache
def pipeline_members() -> dict[str, bytes]:
    """Return the members of a skops file of training's pipeline, fitted on Iris."""
    iris = load_iris()
    frame = pd.DataFrame(iris.data, columns=list(FEATURES))
    pipeline = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(
        frame, [LABELS[t] for t in iris.target])
    with zipfile.ZipFile(io.BytesIO(skops.io.dumps(pipeline))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def npy(header: str) -> bytes:
    """Return a version 1.0 .npy file with ``header`` and 64 bytes of data."""
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(64)


def with_first_array(members: dict[str, bytes], data: bytes | None) -> dict[str, bytes]:
    """Return ``members`` with their first array file's content replaced by ``data``, or removed if None."""
    first = sorted(name for name in members if name.endswith(".npy"))[0]
    changed = {name: content for name, content in members.items() if name != first}
    if data is not None:
        changed[first] = data
    return changed


@pytest.mark.parametrize(("data", "raised"), [
    (b"", "EOFError"),
    (npy("garbage("), "TokenError"),  # numpy tokenises a header it cannot evaluate, and tokenize raises
    (npy(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({2 ** 59},), }}"), "MemoryError"),  # 4 EiB
    (npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }")[:40], "ValueError"),
    (None, "KeyError"),
], ids=["empty", "header-numpy-cannot-read", "shape-past-memory", "truncated", "missing"])
def test_a_skops_file_whose_array_is_malformed_is_a_load_error_naming_what_was_raised(
        tmp_path: Path, data: bytes | None, raised: str) -> None:
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in with_first_array(pipeline_members(), data).items():
            archive.writestr(name, content)
    with pytest.raises(ModelLoadError, match=f"^its skops file cannot be loaded: {raised}: "):
        load_skops_file(path)


# A model whose own code fails: each type MODEL_ERRORS names refuses the version.

class FailingProba:
    """A classifier with the contract's labels whose predict_proba raises ``failure``."""

    classes_ = list(LABELS)

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def predict_proba(self, matrix: Any) -> Any:
        raise self.failure


@pytest.mark.parametrize("failure", [
    ValueError("X has 3 features, but StandardScaler is expecting 4"),
    TypeError("float() argument must be a string or a real number"),
    AttributeError("'Pipeline' object has no attribute 'coef_'"),
    IndexError("index 4 is out of bounds"),
    KeyError("petal_width"),
    FloatingPointError("overflow encountered in exp"),
    NotImplementedError("predict_proba"),
], ids=lambda exc: type(exc).__name__)
def test_a_model_whose_predictions_fail_with_a_named_type_cannot_serve(failure: Exception) -> None:
    with pytest.raises(ModelLoadError, match=f"^{type(failure).__name__}: ") as info:
        ready_model(FailingProba(failure), "iris-classifier", "3", "run-3")
    assert info.value.__cause__ is failure


def test_a_model_failure_of_an_unnamed_type_is_not_disguised_as_a_load_error() -> None:
    with pytest.raises(Surprise):
        ready_model(FailingProba(Surprise("a bug")), "iris-classifier", "3", "run-3")
