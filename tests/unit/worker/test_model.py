"""The worker's numpy and plain-Python paths compute what scikit-learn computes, taking each row's values by name."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shared.schemas import FEATURES
from worker.model import SMALL_BATCH, ServedModel, numpy_predict_proba, small_predict_proba


def fitted_pipeline(columns: list[str]) -> Pipeline:
    """Fit training's scaler + logistic regression on Iris, with the features in ``columns`` order."""
    iris = load_iris()
    frame = pd.DataFrame(iris.data, columns=list(FEATURES))[columns]
    labels = [str(iris.target_names[t]) for t in iris.target]
    return Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(frame, labels)


def test_the_numpy_path_serves_a_scaled_logistic_regression_as_sklearn_does() -> None:
    pipeline = fitted_pipeline(list(FEATURES))
    fast = numpy_predict_proba(pipeline)
    assert fast is not None
    rows = load_iris().data
    reference = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURES)))
    np.testing.assert_allclose(fast(rows), reference, rtol=0, atol=1e-14)


def test_rows_reach_the_model_by_name_whatever_its_training_order() -> None:
    trained = list(reversed(FEATURES))
    model = ServedModel(estimator=fitted_pipeline(trained), name="t", version="1", run_id="r")
    rows = load_iris().data[::10]  # in the contract's FEATURES order, as the API sends them
    ours = np.array([[row["probabilities"][label] for label in model.labels] for row in model.predict_rows(rows)])
    reference = model.estimator.predict_proba(pd.DataFrame(rows, columns=list(FEATURES))[trained])
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


def test_other_estimators_fall_back_to_their_own_predict_proba() -> None:
    from sklearn.tree import DecisionTreeClassifier

    iris = load_iris()
    tree = DecisionTreeClassifier(random_state=0).fit(pd.DataFrame(iris.data, columns=list(FEATURES)),
                                                      [str(t) for t in iris.target])
    assert numpy_predict_proba(tree) is None
    model = ServedModel(estimator=tree, name="t", version="1", run_id="r")
    assert model.predict_rows(iris.data[:3])[0]["pred_label"] == "0"


def test_a_few_rows_take_the_plain_python_path_and_get_what_sklearn_gives() -> None:
    trained = list(reversed(FEATURES))
    model = ServedModel(estimator=fitted_pipeline(trained), name="t", version="1", run_id="r")
    assert model.predict_small is not None and small_predict_proba(fitted_pipeline(list(FEATURES))) is not None
    rows = load_iris().data.tolist()  # lists, in FEATURES order, as an edge batch carries them
    reference = model.estimator.predict_proba(pd.DataFrame(rows, columns=list(FEATURES))[trained])
    for start in range(0, len(rows), SMALL_BATCH):
        answers = model.predict_rows(rows[start:start + SMALL_BATCH])
        ours = np.array([[row["probabilities"][label] for label in model.labels] for row in answers])
        np.testing.assert_allclose(ours, reference[start:start + SMALL_BATCH], rtol=0, atol=1e-12)
    # Both paths give the same label, and probabilities equal to the last bits or so (the scaler is folded).
    small, vectorised = model.predict_rows(rows[:1])[0], model.predict_rows(np.array(rows[:1]))[0]
    assert small["pred_label"] == vectorised["pred_label"]
    np.testing.assert_allclose(list(small["probabilities"].values()), list(vectorised["probabilities"].values()),
                               rtol=0, atol=1e-15)


def test_a_malformed_row_fails_as_it_does_on_the_numpy_path() -> None:
    model = ServedModel(estimator=fitted_pipeline(list(FEATURES)), name="t", version="1", run_id="r")
    for bad in ([[5.1, 3.5, 1.4]], [[5.1, 3.5, 1.4, 0.2, 9.9]]):
        with pytest.raises(ValueError):
            model.predict_rows(bad)
