"""MLflow's own scoring client against the real API (granian) and a real worker: it gets the model's labels."""

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from shared.schemas import FEATURES
from worker.model import ServedModel


@pytest.fixture(scope="module")
def api_port(granian_url: str) -> int:
    return int(granian_url.rsplit(":", 1)[1])


def labels(model: ServedModel, rows: np.ndarray) -> list[str]:
    return [answer["pred_label"] for answer in model.predict_rows(rows)]


def post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_mlflow_client_gets_the_model_labels_for_a_dataframe(api_port: int, model: ServedModel,
                                                             rows: np.ndarray) -> None:
    client = ScoringServerClient("127.0.0.1", api_port)
    client.wait_server_ready(timeout=30)
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    answer = client.invoke(frame)
    expected = labels(model, rows)
    assert set(expected) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    assert answer["predictions"] == expected
    assert answer.get_predictions()[0].tolist() == expected


def test_mlflow_client_gets_the_same_labels_for_arrays_and_records(api_port: int, model: ServedModel,
                                                                   rows: np.ndarray) -> None:
    client = ScoringServerClient("127.0.0.1", api_port)
    records = [dict(zip(FEATURES, map(float, row), strict=True)) for row in rows]
    # An ndarray goes as {"inputs": [[...]]}, a list of dicts as {"inputs": [{...}]}.
    assert client.invoke(rows)["predictions"] == labels(model, rows)
    assert client.invoke(records)["predictions"] == labels(model, rows)


def test_mlflow_client_pings_and_reads_the_versions(api_port: int, model: ServedModel) -> None:
    client = ScoringServerClient("127.0.0.1", api_port)
    client.ping()  # raises unless 200
    version = json.loads(client.get_version())
    assert version["service_version"] == "test" and version["model_versions"] == [model.version]
    assert {info["model_version"] for info in version["workers"].values()} == {model.version}


@pytest.mark.parametrize("shape", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_each_input_format_over_http_gets_the_model_labels(api_port: int, model: ServedModel, rows: np.ndarray,
                                                            shape: str) -> None:
    values = rows.tolist()
    records = [dict(zip(FEATURES, row, strict=True)) for row in values]
    bodies = {
        "dataframe_split": {"columns": list(FEATURES)[::-1], "data": [row[::-1] for row in values],
                            "index": list(range(len(values)))},
        "dataframe_records": records,
        "instances": values,
        "inputs": {name: [record[name] for record in records] for name in FEATURES},
    }
    status, body = post(api_port, json.dumps({shape: bodies[shape]}).encode())
    assert status == 200 and body == {"predictions": labels(model, rows)}


def test_a_bad_row_over_http_is_the_seed_error_envelope(api_port: int) -> None:
    status, body = post(api_port, json.dumps({"instances": [[5.1, 3.5, 1.4, 0.0]]}).encode())
    assert status == 400 and body["message"] == "failed" and body["version"] == "test"
    assert body["error"]["raised"] == "ValidationError" and "instances.0.petal_width" in body["error"]["message"]


def test_csv_over_http_is_a_415_envelope(api_port: int, rows: np.ndarray) -> None:
    csv = pd.DataFrame(rows, columns=list(FEATURES)).to_csv(index=False).encode()
    status, body = post(api_port, csv, content_type="text/csv")
    assert status == 415 and body["error"]["raised"] == "UnsupportedMediaType"
