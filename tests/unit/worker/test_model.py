"""The worker's numpy path computes what scikit-learn computes, and takes each row's values by name."""

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shared.schemas import FEATURES
from worker.model import ServedModel, numpy_predict_proba


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
