"""Train the Iris classifier, log and register it in MLflow, and move the champion alias if no worse."""

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.schemas import FEATURES, LABELS
from shared.settings import Settings, get_settings

# Heavy libraries are imported inside the functions that use them so `--if-missing` stays fast.
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from sklearn.model_selection import GridSearchCV

    from training.registry import PromotionOutcome

SEED = 42
TEST_SIZE = 0.2
CV_FOLDS = 5
SCORING = "f1_macro"
EXPERIMENT_NAME = "iris-classifier"
PARAM_GRID: dict[str, tuple[Any, ...]] = {
    "clf__C": (0.01, 0.1, 1.0, 10.0, 100.0),
    "clf__class_weight": (None, "balanced"),
}


@dataclass(frozen=True)
class Evaluation:
    """Hold-out scores of a fitted model."""

    accuracy: float
    macro_f1: float
    confusion: "np.ndarray"


def load_dataset() -> tuple["pd.DataFrame", "pd.Series"]:
    """Return the shipped Iris data as a FEATURES-named frame and string labels from LABELS."""
    import pandas as pd
    from sklearn.datasets import load_iris

    iris = load_iris()
    # Fail loudly if scikit-learn ever reorders its columns or classes: the mapping below is positional.
    expected_names = [f"{name.replace('_', ' ')} (cm)" for name in FEATURES]
    if list(iris.feature_names) != expected_names:
        raise RuntimeError(f"unexpected iris feature names {iris.feature_names!r}")
    if [f"Iris-{name}" for name in iris.target_names] != list(LABELS):
        raise RuntimeError(f"unexpected iris target names {list(iris.target_names)!r}")
    features = pd.DataFrame(iris.data, columns=list(FEATURES))
    labels = pd.Series([LABELS[i] for i in iris.target], name="label")
    return features, labels


def build_search(on_score: Callable[[], None] | None = None) -> "GridSearchCV":
    """Return the unfitted grid search over the scaler + logistic-regression pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    scorer = get_scorer(SCORING)

    def score(estimator: Any, x: Any, y: Any) -> float:
        # GridSearchCV scores each candidate-fold fit exactly once, so this is the progress hook.
        value = scorer(estimator, x, y)
        if on_score is not None:
            on_score()
        return value

    return GridSearchCV(
        pipeline,
        {key: list(values) for key, values in PARAM_GRID.items()},
        scoring=score,
        cv=StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=SEED),
        # In-process fits keep the progress hook in this process; 50 tiny fits gain nothing from workers.
        n_jobs=1,
        refit=True,
        error_score="raise",
    )


def tune(x_train: "pd.DataFrame", y_train: "pd.Series", quiet: bool = False) -> "GridSearchCV":
    """Run the grid search with a progress bar on stderr and return it refitted on the best parameters."""
    from sklearn.model_selection import ParameterGrid
    from tqdm import tqdm

    total = len(ParameterGrid(dict(PARAM_GRID))) * CV_FOLDS
    with tqdm(total=total, desc="grid search", unit="fit", file=sys.stderr, disable=quiet) as bar:
        search = build_search(on_score=lambda: bar.update(1))
        search.fit(x_train, y_train)
    return search


def evaluate(model: Any, x_test: "pd.DataFrame", y_test: "pd.Series") -> Evaluation:
    """Score the model on the hold-out set."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    predicted = model.predict(x_test)
    return Evaluation(
        accuracy=float(accuracy_score(y_test, predicted)),
        macro_f1=float(f1_score(y_test, predicted, average="macro", labels=list(LABELS))),
        confusion=confusion_matrix(y_test, predicted, labels=list(LABELS)),
    )


def plot_confusion_matrix(confusion: "np.ndarray") -> "Figure":
    """Draw the confusion matrix with LABELS on both axes and the count in every cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(6, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(LABELS))
    ax.set_xticks(ticks, LABELS, rotation=20)
    ax.set_yticks(ticks, LABELS)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title("Hold-out confusion matrix")
    threshold = confusion.max() / 2
    for row in ticks:
        for col in ticks:
            count = int(confusion[row, col])
            colour = "white" if count > threshold else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=colour)
    return fig


def train_and_register(
    settings: Settings, client: "MlflowClient", force: bool = False, quiet: bool = False
) -> "PromotionOutcome":
    """Train, log the run and model to MLflow, register a new version and apply the promotion gate."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.model_selection import train_test_split

    from training.registry import F1_KEY, promote_if_better

    features, labels = load_dataset()
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=TEST_SIZE, stratify=labels, random_state=SEED
    )
    search = tune(x_train, y_train, quiet=quiet)
    model = search.best_estimator_
    scores = evaluate(model, x_test, y_test)

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(EXPERIMENT_NAME)
    with mlflow.start_run() as run:
        mlflow.log_params(
            {
                **search.best_params_,
                "seed": SEED,
                "test_size": TEST_SIZE,
                "cv_folds": CV_FOLDS,
                "cv_scoring": SCORING,
            }
        )
        mlflow.log_metrics(
            {
                "cv_f1_macro": float(search.best_score_),
                "holdout_accuracy": scores.accuracy,
                F1_KEY: scores.macro_f1,
            }
        )
        mlflow.log_figure(plot_confusion_matrix(scores.confusion), "confusion_matrix.png")
        # The signature describes pyfunc's predict (the default predict fn): FEATURES in, a label out.
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_train, model.predict(x_train)),
            input_example=x_train.head(3),
            # skops is MLflow's safe default; pinning it here keeps it in step with the explicit requirements,
            # which replace MLflow's inference: a subprocess that costs ~5 s and picks up stray test packages.
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
            registered_model_name=settings.iris_model_name,
        )
    version = info.registered_model_version
    if version is None:
        raise RuntimeError(f"MLflow did not register run {run.info.run_id} as {settings.iris_model_name}")
    client.set_model_version_tag(settings.iris_model_name, str(version), F1_KEY, f"{scores.macro_f1:.6f}")
    return promote_if_better(
        client, settings.iris_model_name, settings.iris_model_alias, version, scores.macro_f1, force=force
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the Iris classifier, register it in MLflow and move the champion alias "
        "when the new version's hold-out macro-F1 is no worse.",
    )
    parser.add_argument(
        "--force", action="store_true", help="move the champion alias even if the new version is worse"
    )
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing when the champion alias already resolves"
    )
    parser.add_argument("--quiet", action="store_true", help="hide the progress bar and MLflow's INFO logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training CLI and return the process exit code."""
    args = parse_args(argv)
    from mlflow import MlflowClient

    from training.registry import get_champion

    if args.quiet:
        # After the import: importing mlflow configures its logger at INFO and would undo this.
        logging.getLogger("mlflow").setLevel(logging.WARNING)

    settings = get_settings()
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    if args.if_missing:
        champion = get_champion(client, settings.iris_model_name, settings.iris_model_alias)
        if champion is not None:
            print(
                f"champion {settings.iris_model_name}@{settings.iris_model_alias} "
                f"is version {champion.version}; nothing to train"
            )
            return 0
    outcome = train_and_register(settings, client, force=args.force, quiet=args.quiet)
    print(outcome.describe())
    return 0
