"""Load model versions from the MLflow registry and predict on numpy arrays, never pandas."""

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.schemas import FEATURES, LABELS
from shared.settings import Settings


class ModelLoadError(RuntimeError):
    """A model version could not be resolved, loaded, warmed or matched to the contract."""


# Up to this many rows, plain Python floats beat numpy, whose per-call overhead dwarfs 12 multiply-adds a row:
# a worker measured 415 against 470 µs of CPU per one-row edge batch (load/bench_worker.py).
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


def ready_model(estimator: Any, name: str, version: str, run_id: str) -> ServedModel:
    """Wrap a loaded estimator, check it against the contract and warm it; raise ModelLoadError if it cannot serve."""
    try:
        model = ServedModel(estimator=estimator, name=name, version=version, run_id=run_id)
        check_contract(model)
        model.warm()
    except ModelLoadError:
        raise
    except Exception as exc:  # no classes_, a predict_proba that fails or answers the wrong shape, ...
        raise ModelLoadError(f"{type(exc).__name__}: {first_line(exc)}") from exc
    return model


class Registry:
    """The MLflow registry as a worker uses it: resolve the alias to a version, and load one pinned version."""

    def __init__(self, settings: Settings) -> None:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        self.settings = settings
        self.client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)

    def resolve(self) -> str:
        """Return the version the alias names now."""
        settings = self.settings
        try:
            return str(self.client.get_model_version_by_alias(settings.iris_model_name,
                                                              settings.iris_model_alias).version)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {settings.model_uri} from {settings.mlflow_tracking_uri}: "
                                 f"{first_line(exc)}") from exc

    def load(self, version: str) -> ServedModel:
        """Load one version's sklearn flavour, check it against the contract and warm it, or raise ModelLoadError."""
        import mlflow.sklearn

        name = self.settings.iris_model_name
        uri = f"models:/{name}/{version}"
        # The pipeline was fitted on named columns; numpy rows are already in that order (see columns).
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
        try:
            run_id = self.client.get_model_version(name, version).run_id
            # Pinned to the version, so a promotion during the load cannot mix two models.
            return ready_model(mlflow.sklearn.load_model(uri), name, str(version), str(run_id))
        except Exception as exc:
            raise ModelLoadError(f"cannot load {uri} from {self.settings.mlflow_tracking_uri}: "
                                 f"{first_line(exc)}") from exc


def load_served_model(settings: Settings) -> ServedModel:
    """Resolve the alias to one registry version, load that version's sklearn flavour and warm it."""
    registry = Registry(settings)
    model = registry.load(registry.resolve())
    print(f"iris worker: serving {settings.iris_model_name} version {model.version} "
          f"(run {model.run_id}) from {settings.mlflow_tracking_uri}", file=sys.stderr, flush=True)
    return model
