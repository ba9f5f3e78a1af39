"""The worker's model from a real MLflow registry: the numpy path answers exactly what MLflow's pyfunc answers."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from shared.schemas import FEATURES
from tests.helpers import SEED_EXAMPLE, load_champion, make_settings
from worker.model import ModelLoadError, ServedModel, numpy_predict_proba

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(mlflow_store: str) -> ServedModel:
    return load_champion(make_settings({"MLFLOW_TRACKING_URI": mlflow_store}))


def test_predictions_equal_mlflow_pyfunc_on_the_whole_iris_data_set(served: ServedModel, mlflow_store: str) -> None:
    import mlflow.pyfunc

    mlflow.set_tracking_uri(mlflow_store)
    pyfunc = mlflow.pyfunc.load_model(f"models:/iris-classifier/{served.version}")
    frame = pd.DataFrame(load_iris().data, columns=list(FEATURES))
    ours = served.predict_rows(frame.to_numpy())
    assert [row["pred_label"] for row in ours] == list(pyfunc.predict(frame))
    reference = pyfunc.get_raw_model().predict_proba(frame)
    mine = np.array([[row["probabilities"][label] for label in served.labels] for row in ours])
    np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-12)


def test_rows_reach_the_model_by_name_whatever_its_training_order(served: ServedModel) -> None:
    row = [SEED_EXAMPLE[f] for f in FEATURES]
    expected = served.predict_rows([row])[0]
    # A model trained on the columns in another order still gets each value under its own name.
    served.columns = served.columns[::-1]
    try:
        assert served.predict_rows([row])[0] != expected
    finally:
        served.columns = served.columns[::-1]
    assert served.predict_rows([row])[0] == expected


def test_identity_comes_from_the_registry(served: ServedModel) -> None:
    result = served.predict_rows([[5.1, 3.5, 1.4, 0.2]])[0]
    assert result["model_name"] == "iris-classifier" and result["model_version"] == served.version
    assert result["model_run_id"] == served.run_id and result["pred_label"] == "Iris-setosa"


def test_a_missing_champion_is_a_one_line_load_error(tmp_path: object) -> None:
    settings = make_settings({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/empty.db"})
    with pytest.raises(ModelLoadError, match=r"cannot load models:/iris-classifier@champion") as info:
        load_champion(settings)
    assert "\n" not in str(info.value)


def test_the_numpy_path_serves_the_registered_pipeline_and_matches_sklearn(served: ServedModel) -> None:
    assert numpy_predict_proba(served.estimator) is not None
    rows = load_iris().data
    np.testing.assert_allclose(served.predict_proba(rows), served.estimator.predict_proba(rows), rtol=0, atol=1e-14)
