"""Load model versions from the MLflow registry and predict on numpy arrays, never pandas."""

import json
import math
import os
import tempfile
import time
import tokenize
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np

from shared.redact import redact, redact_url
from shared.schemas import FEATURES, LABELS
from shared.settings import Settings


class ModelLoadError(RuntimeError):
    """A model version could not be resolved, loaded, warmed or matched to the contract."""


# Up to this many rows, plain Python floats beat numpy, whose per-call overhead dwarfs 12 multiply-adds a row
# (load/bench_worker.py measures it; docs/design.md has the figures).
SMALL_BATCH = 8


def _scaled_softmax(estimator: Any) -> tuple[Any, Any, Any, Any] | None:
    """Return (mean, scale, weights, intercept) of a StandardScaler + multinomial LogisticRegression pipeline,
    else None."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(estimator, Pipeline) or len(estimator.steps) != 2:
        return None
    scaler, clf = (step for _, step in estimator.steps)
    if not (isinstance(scaler, StandardScaler) and isinstance(clf, LogisticRegression) and len(clf.classes_) > 2):
        return None
    mean = scaler.mean_ if scaler.with_mean else np.zeros(clf.coef_.shape[1])
    scale = scaler.scale_ if scaler.with_std else np.ones(clf.coef_.shape[1])
    return mean, scale, clf.coef_.T.copy(), clf.intercept_.copy()


def small_predict_proba(estimator: Any) -> Callable[[list[list[float]]], list[list[float]]] | None:
    """Return the pipeline's predict_proba on a few rows (in its training column order) as plain Python floats,
    for the same pipelines as :func:`numpy_predict_proba`, else None.

    The scaler is folded into the weights (``((x - m) / s) @ W + b == x @ (W / s) + (b - (m / s) @ W)``); the
    results match scikit-learn's to about 1e-15.
    """
    fitted = _scaled_softmax(estimator)
    if fitted is None:
        return None
    mean, scale, weights, intercept = fitted
    folded = weights / scale[:, None]
    classes = [(*folded[:, k].tolist(), float(intercept[k] - (mean / scale) @ weights[:, k]))
               for k in range(weights.shape[1])]
    exp = math.exp

    def predict_proba(rows: list[list[float]]) -> list[list[float]]:
        answers = []
        for row in rows:
            logits = [sum(w * x for w, x in zip(coefficients, row, strict=False)) + coefficients[-1]
                      for coefficients in classes]
            top = max(logits)
            odds = [exp(logit - top) for logit in logits]
            total = sum(odds)
            answers.append([value / total for value in odds])
        return answers

    return predict_proba


def numpy_predict_proba(estimator: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """Return the pipeline's predict_proba as plain numpy when it is a StandardScaler followed by a
    multinomial LogisticRegression, else None.

    It does the same arithmetic as scikit-learn (scale, affine, softmax) from the fitted parameters of the
    registered model, without scikit-learn's per-call input validation, which costs more than the maths
    on a batch of a few dozen rows.
    """
    fitted = _scaled_softmax(estimator)
    if fitted is None:
        return None
    mean, scale, weights, intercept = fitted

    def predict_proba(matrix: np.ndarray) -> np.ndarray:
        logits = ((matrix - mean) / scale) @ weights + intercept
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    return predict_proba


class Predictor(Protocol):
    """What a task predicts with: a ServedModel, or worker/shadow.py's Recording of one."""

    def predict_rows(self, rows: list[list[float]] | np.ndarray) -> list[dict[str, Any]]: ...


@dataclass
class ServedModel:
    """A registered scikit-learn model with its registry identity and its column order."""

    estimator: Any
    name: str
    version: str
    run_id: str
    loaded_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.labels = [str(label) for label in self.estimator.classes_]
        trained_order = getattr(self.estimator, "feature_names_in_", None)
        names = [str(n) for n in trained_order] if trained_order is not None else list(FEATURES)
        if sorted(names) != sorted(FEATURES):
            raise ModelLoadError(f"model expects features {names}, the contract has {list(FEATURES)}")
        # Rows arrive in the contract's FEATURES order; the model gets them by name in its training order.
        self.columns = np.array([FEATURES.index(name) for name in names])
        self.predict_proba = numpy_predict_proba(self.estimator) or self.estimator.predict_proba
        self.predict_small = small_predict_proba(self.estimator)

    def info(self) -> dict[str, Any]:
        """Describe the loaded model for readiness checks."""
        return {"model_name": self.name, "model_version": self.version, "model_run_id": self.run_id,
                "labels": self.labels, "loaded_at": self.loaded_at}

    def warm(self) -> None:
        """Run one prediction so the first real task does not pay for lazy initialisation."""
        self.predict_rows([[5.1, 3.5, 1.4, 0.2]])

    def predict_rows(self, rows: list[list[float]] | np.ndarray) -> list[dict[str, Any]]:
        """Predict rows given in FEATURES order, vectorised (or in plain Python when few); answer in order."""
        probabilities: list[list[float]]
        width = len(FEATURES)
        if (self.predict_small is not None and isinstance(rows, list) and len(rows) <= SMALL_BATCH
                and all(len(row) == width for row in rows)):  # a malformed row fails on the numpy path
            columns = self.columns.tolist()
            probabilities = self.predict_small([[row[c] for c in columns] for row in rows])
            best = [p.index(max(p)) for p in probabilities]  # the first of equals, as numpy's argmax
        else:
            matrix = np.asarray(rows, dtype=np.float64).reshape(-1, width)[:, self.columns]
            proba = self.predict_proba(matrix)
            best, probabilities = proba.argmax(axis=1).tolist(), proba.tolist()
        labels = self.labels
        identity = {"model_name": self.name, "model_version": self.version, "model_run_id": self.run_id}
        return [
            {
                "pred_label": labels[b],
                "pred_confidence": p[b],
                "probabilities": dict(zip(labels, p, strict=True)),
                **identity,
            }
            for b, p in zip(best, probabilities, strict=True)
        ]


def check_contract(model: ServedModel) -> None:
    """Refuse a model whose labels are not the contract's LABELS (its features are checked when it is built)."""
    if sorted(model.labels) != sorted(LABELS):
        raise ModelLoadError(f"model predicts labels {model.labels}, the contract has {list(LABELS)}")


def first_line(exc: BaseException) -> str:
    """Return an error's first line (its type when it has no message), for one-line log and refusal reasons."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# What a model's own code raises when it cannot serve: scikit-learn's checks and numpy's on rows of the wrong shape
# or type (ValueError, TypeError, LookupError for an index or a column not there), an estimator with no classes_ or
# predict_proba (AttributeError), arithmetic that fails (ZeroDivisionError, OverflowError, FloatingPointError under
# np.errstate), and RuntimeError (NotImplementedError, RecursionError, and what an estimator raises for a state it
# cannot handle).
MODEL_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, AttributeError, LookupError, ArithmeticError,
                                             RuntimeError)


def ready_model(estimator: Any, name: str, version: str, run_id: str) -> ServedModel:
    """Wrap a loaded estimator, check it against the contract and warm it; raise ModelLoadError if it cannot serve."""
    try:
        model = ServedModel(estimator=estimator, name=name, version=version, run_id=run_id)
        check_contract(model)
        model.warm()
    except ModelLoadError:
        raise
    except MODEL_ERRORS as exc:  # no classes_, a predict_proba that fails or answers the wrong shape, ...
        raise ModelLoadError(f"{type(exc).__name__}: {first_line(exc)}") from exc
    return model


# Whoever can write to the registry chooses the files a worker loads, so a worker trusts none of a version's own
# claims: it reads MLmodel as data, loads only the skops format, and builds only the types below, whatever the
# file's ``skops_trusted_types`` say. Names are skops's: the module that defines a type, then its name.
SKOPS_ALLOWED_TYPES = frozenset({
    # The pipeline training/train.py fits, and nothing else: plain scikit-learn estimator classes. skops builds each
    # with cls.__new__ and the estimator's own __setstate__ (a dict update of fitted values); no estimator code from
    # the file runs, and none of their attributes is a callable taken from the file.
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    # Fitted arrays (means, scales, coefficients) are read by np.load(allow_pickle=False); the label and feature
    # name arrays are object arrays that skops builds from JSON strings. StandardScaler.n_samples_seen_ is a
    # numpy.float64 scalar, built from such an array.
    "numpy.ndarray",
    "numpy.float64",
    # The containers of an estimator's state (the steps list, its (name, estimator) tuples, attribute dicts) and
    # the str type of their keys: built empty, then filled with the items above. JSON values (numbers, strings,
    # booleans, None) are skops JsonNodes, which json.loads builds and skops names builtins.str.
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.str",
})
# skops's node kinds that build only the type they name. The others (FunctionNode, MethodNode, PartialNode,
# ReduceNode, OperatorFuncNode, RandomGeneratorNode, ...) import or call further names the file supplies.
SKOPS_ALLOWED_NODES = frozenset({"ObjectNode", "DictNode", "ListNode", "TupleNode", "JsonNode", "TypeNode",
                                 "NdArrayNode"})
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
_SHOWN = 5  # names of refused types in a refusal's message, each cut to _NAME_CHARS: the file chose them
_NAME_CHARS = 80


def _nodes(state: Any) -> Iterator[dict[str, Any]]:
    """Yield every node of a skops schema: each dict, at any depth, that names a loader, a class or a module."""
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item or "__class__" in item or "__module__" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def audit_skops_file(path: Path) -> None:
    """Refuse a skops file that names a type or a node kind outside this worker's allowlists, before skops builds
    anything from it; raise ModelLoadError.

    skops's own audit cannot do this: it trusts every scikit-learn estimator and numpy ufunc by default and only
    adds ``trusted`` to them. Its schema is JSON; reading it runs nothing from the file.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:  # JSONDecodeError is a ValueError
        raise ModelLoadError(f"its skops file cannot be read: {type(exc).__name__}") from exc
    types: set[str] = set()
    kinds: set[str] = set()
    for node in _nodes(schema):
        kind, module, name = node.get("__loader__"), node.get("__module__"), node.get("__class__")
        if not all(isinstance(part, str) for part in (kind, module, name)):
            raise ModelLoadError("its skops file has a malformed node")
        if f"{module}.{name}" not in SKOPS_ALLOWED_TYPES:
            types.add(f"{module}.{name}")
        if kind not in SKOPS_ALLOWED_NODES:
            kinds.add(f"{kind} node")
    refused = sorted(types) + sorted(kinds)  # the types first: they say what the file holds
    if refused:
        shown = ", ".join(repr(item[:_NAME_CHARS]) for item in refused[:_SHOWN])
        more = f" and {len(refused) - _SHOWN} more" if len(refused) > _SHOWN else ""
        raise ModelLoadError(f"its skops file names what the workers' allowlist does not hold: {shown}{more}")


def skops_file(model_dir: Path) -> str:
    """Read a downloaded version's MLmodel as data; return the name of its skops file, or raise ModelLoadError
    for any other format, a missing sklearn flavour or a file outside the model's directory."""
    import yaml

    try:
        meta = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"its MLmodel file cannot be read: {type(exc).__name__}") from exc
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    flavour = flavors.get("sklearn") if isinstance(flavors, dict) else None
    if not isinstance(flavour, dict):
        found = sorted(str(name)[:_NAME_CHARS] for name in flavors) if isinstance(flavors, dict) else []
        raise ModelLoadError(f"it has no sklearn flavour (flavours: {', '.join(found) or 'none'}); "
                             "the workers serve scikit-learn models saved as skops")
    serialisation = flavour.get("serialization_format")
    if serialisation != "skops":
        said = repr(str(serialisation)[:_NAME_CHARS]) if serialisation is not None else "pickle (MLflow's default)"
        raise ModelLoadError(f"its sklearn flavour is saved as {said}; the workers load skops only and never "
                             "unpickle")
    name = flavour.get("pickled_model")  # MLflow's key for the data file, whatever its format
    if not (isinstance(name, str) and name.endswith(".skops") and PurePosixPath(name).name == name
            and "\\" not in name):
        raise ModelLoadError(f"its skops file name {str(name)[:_NAME_CHARS]!r} is not a plain *.skops file name")
    # flavour["skops_trusted_types"] is the registry writer's say on what to trust: never read.
    return name


# What skops and numpy raise building an estimator from a file whose schema or arrays are not what they say, besides
# MODEL_ERRORS (a node of the wrong type, a missing array file: KeyError): zipfile.BadZipFile, and for a malformed
# .npy array EOFError (an empty file), tokenize.TokenError (a header numpy cannot tokenise) and MemoryError (numpy
# cannot allocate the shape a header claims). tests/unit/worker/test_model_errors.py builds each.
SKOPS_ERRORS: tuple[type[Exception], ...] = (*MODEL_ERRORS, zipfile.BadZipFile, EOFError, tokenize.TokenError,
                                             MemoryError)


def load_skops_file(path: Path) -> Any:
    """Load an estimator from a skops file if it names only allowed types; raise ModelLoadError if not."""
    audit_skops_file(path)
    import skops.io

    try:
        # Our list, never the version's: skops adds it to its defaults, which our audit has already narrowed.
        return skops.io.load(path, trusted=sorted(SKOPS_ALLOWED_TYPES))
    except SKOPS_ERRORS as exc:
        raise ModelLoadError(f"its skops file cannot be loaded: {type(exc).__name__}: {first_line(exc)}") from exc


# What fetching a version's files raises besides the registry client's errors (Registry.errors): ImportError for an
# artifact store whose client library this image lacks (s3:// needs boto3, gs:// google-cloud-storage), ValueError
# for an artifact URI its repository cannot parse; and ModelLoadError, from the checks of what was fetched.
FETCH_ERRORS: tuple[type[Exception], ...] = (ImportError, ValueError, ModelLoadError)


class Registry:
    """The MLflow registry as a worker uses it: resolve the alias to a version, and load one pinned version."""

    def __init__(self, settings: Settings) -> None:
        import mlflow
        import requests
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        # Defence in depth: should anything in this worker process reach MLflow's own model loaders, they refuse
        # every format (skops too). Forced, not defaulted: the environment may have turned it on.
        os.environ[PICKLE_SWITCH] = "false"
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        self.settings = settings
        self.client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        # What the registry client raises (here, not at module level: importing MLflow takes seconds): MlflowException,
        # which its stores raise and wrap their database and HTTP errors in; requests' errors, which an artifact
        # download over HTTP raises unwrapped; OSError, from a local store's files and directories.
        self.errors: tuple[type[Exception], ...] = (MlflowException, requests.RequestException, OSError)

    def _error(self, uri: str, exc: BaseException) -> ModelLoadError:
        # The tracking URI may carry a password (http://user:pw@mlflow), and so may an error that quotes it.
        where = redact_url(self.settings.mlflow_tracking_uri)
        return ModelLoadError(redact(f"cannot load {uri} from {where}: {first_line(exc)}"))

    def resolve(self) -> str:
        """Return the version the alias names now."""
        settings = self.settings
        try:
            return str(self.client.get_model_version_by_alias(settings.iris_model_name,
                                                              settings.iris_model_alias).version)
        except self.errors as exc:
            raise self._error(settings.model_uri, exc) from exc

    def resolve_alias(self, alias: str) -> str | None:
        """Return the version ``alias`` names now, or None when no version has it (the challenger's may be unset)."""
        name = self.settings.iris_model_name
        try:
            # The alias map, not get_model_version_by_alias: a missing alias would come back as the same generic
            # error as a real failure (training/registry.py reads it this way too).
            version = self.client.get_registered_model(name).aliases.get(alias)
        except self.errors as exc:
            raise self._error(f"models:/{name}@{alias}", exc) from exc
        return str(version) if version is not None else None

    def load(self, version: str) -> ServedModel:
        """Download one version's MLmodel and skops file, load them without unpickling, check the model against the
        contract and warm it, or raise ModelLoadError."""
        import mlflow.artifacts

        name = self.settings.iris_model_name
        # Pinned to the version, whose files never change, so a promotion during the load cannot mix two models.
        uri = f"models:/{name}/{version}"
        # The pipeline was fitted on named columns; numpy rows are already in that order (see columns).
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
        try:
            run_id = self.client.get_model_version(name, version).run_id
            # Where this version's files are, asked once (a models:/ URI per file would ask again for each).
            files = self.client.get_model_version_download_uri(name, version).rstrip("/")
            with tempfile.TemporaryDirectory(prefix="iris-model-") as tmp:
                # MLmodel first: a version in another format is refused before its data file is even fetched.
                mlflow.artifacts.download_artifacts(artifact_uri=f"{files}/MLmodel", dst_path=tmp)
                data = skops_file(Path(tmp))
                mlflow.artifacts.download_artifacts(artifact_uri=f"{files}/{data}", dst_path=tmp)
                estimator = load_skops_file(Path(tmp) / data)
            return ready_model(estimator, name, str(version), str(run_id))
        except (*self.errors, *FETCH_ERRORS) as exc:  # skops's and the model's own are ModelLoadErrors by now
            raise self._error(uri, exc) from exc
