"""Load the champion from the MLflow registry and predict on numpy arrays, never pandas."""

import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.schemas import FEATURES
from shared.settings import Settings


class ModelLoadError(RuntimeError):
    """The champion model could not be resolved or loaded."""


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

    def info(self) -> dict[str, Any]:
        """Describe the loaded model for readiness checks."""
        return {"model_name": self.name, "model_version": self.version, "model_run_id": self.run_id,
                "labels": self.labels, "loaded_at": self.loaded_at}

    def predict_rows(self, rows: list[list[float]] | np.ndarray) -> list[dict[str, Any]]:
        """Predict rows given in FEATURES order with one vectorised call; answer in order."""
        matrix = np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES))[:, self.columns]
        proba = self.estimator.predict_proba(matrix)
        best = proba.argmax(axis=1)
        labels = self.labels
        identity = {"model_name": self.name, "model_version": self.version, "model_run_id": self.run_id}
        return [
            {
                "pred_label": labels[b],
                "pred_confidence": p[b],
                "probabilities": dict(zip(labels, p, strict=True)),
                **identity,
            }
            for b, p in zip(best.tolist(), proba.tolist(), strict=True)
        ]


def load_served_model(settings: Settings) -> ServedModel:
    """Resolve the alias to one registry version, load that version's sklearn flavour and warm it."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(settings.iris_model_name, settings.iris_model_alias)
        # Pin the resolved version so a promotion during start-up cannot mix two models.
        estimator = mlflow.sklearn.load_model(f"models:/{settings.iris_model_name}/{version.version}")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load {settings.model_uri} from {settings.mlflow_tracking_uri}: "
                             f"{reason}") from exc
    # The pipeline was fitted on named columns; numpy rows are already in that order (see columns).
    warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
    model = ServedModel(estimator=estimator, name=settings.iris_model_name, version=str(version.version),
                        run_id=str(version.run_id))
    model.predict_rows([[5.1, 3.5, 1.4, 0.2]])
    print(f"iris worker: serving {settings.iris_model_name} version {model.version} "
          f"(run {model.run_id}) from {settings.mlflow_tracking_uri}", file=sys.stderr, flush=True)
    return model
