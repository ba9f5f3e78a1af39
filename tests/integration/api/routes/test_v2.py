"""Triton's own HTTP client against /v2 on the real API (granian) and a real worker: it gets the model's answers."""

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from tritonclient.utils import InferenceServerException

from api import create_app
from shared.schemas import FEATURES, LABELS
from tests.helpers import WorkerProcess, make_settings
from worker.model import ServedModel

MODEL = "iris-classifier"


@pytest.fixture
def client(granian_url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(granian_url.removeprefix("http://"), network_timeout=30)
    yield client
    client.close()


def expected(model: ServedModel, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    answers = model.predict_rows(rows.tolist())
    return ([answer["pred_label"] for answer in answers],
            np.array([[answer["probabilities"][label] for label in LABELS] for answer in answers]))


def labels_of(result: triton.InferResult) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else value for value in result.as_numpy("label").tolist()]


def test_triton_client_sees_a_live_ready_server_and_the_models_metadata(client: triton.InferenceServerClient,
                                                                         model: ServedModel) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, model_version=model.version)
    assert not client.is_model_ready("resnet50") and not client.is_model_ready(MODEL, model_version="999")
    server = client.get_server_metadata()
    assert server["version"] == "test" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["versions"] == [model.version]
    assert metadata["inputs"][0]["shape"] == [-1, 4] and metadata["inputs"][0]["datatype"] == "FP32"
    assert {(o["name"], o["datatype"]) for o in metadata["outputs"]} == {("label", "BYTES"),
                                                                         ("probabilities", "FP32")}
    assert client.get_model_metadata(MODEL, model_version=model.version) == metadata


def test_triton_client_infers_fp32_json_rows_with_requested_outputs(client: triton.InferenceServerClient,
                                                                     model: ServedModel, rows: np.ndarray) -> None:
    tensor = triton.InferInput("input", [len(rows), 4], "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32), binary_data=False)
    outputs = [triton.InferRequestedOutput("label", binary_data=False),
               triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(MODEL, [tensor], outputs=outputs, request_id="batch-1")
    labels, probabilities = expected(model, rows.astype(np.float32).astype(np.float64))
    assert set(labels) == set(LABELS) and labels_of(result) == labels
    assert result.as_numpy("probabilities").shape == (6, 3)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "batch-1" and response["model_name"] == MODEL
    assert response["model_version"] == model.version


def test_triton_client_default_binary_fp64_input_on_the_versioned_path(client: triton.InferenceServerClient,
                                                                        model: ServedModel, rows: np.ndarray) -> None:
    tensor = triton.InferInput("input", [len(rows), 4], "FP64")
    tensor.set_data_from_numpy(rows)  # binary_data=True: Triton's binary tensor extension
    result = client.infer(MODEL, [tensor], model_version=model.version,
                          outputs=[triton.InferRequestedOutput("label")])
    assert labels_of(result) == expected(model, rows)[0]
    assert result.as_numpy("probabilities") is None  # only what was asked for
    assert result.get_response()["model_version"] == model.version


def test_triton_client_infers_one_row_as_four_named_feature_tensors(client: triton.InferenceServerClient,
                                                                    model: ServedModel, rows: np.ndarray) -> None:
    tensors = []
    for column, name in enumerate(FEATURES):
        tensor = triton.InferInput(name, [1], "FP64")
        tensor.set_data_from_numpy(rows[-1:, column], binary_data=column % 2 == 0)  # JSON and binary mixed
        tensors.append(tensor)
    result = client.infer(MODEL, tensors)
    assert labels_of(result) == expected(model, rows[-1:])[0]
    assert len(result.get_response()["id"]) == 36  # no request id: the task's


@pytest.mark.parametrize(("name", "version", "datatype", "status", "message"), [
    ("resnet50", "", "FP32", "404", "unknown model 'resnet50'"),
    (MODEL, "999", "FP32", "404", "has no version '999' served"),
    (MODEL, "", "INT32", "400", "datatype must be FP32 or FP64; got INT32"),
])
def test_triton_client_raises_the_servers_error_and_status(client: triton.InferenceServerClient, name: str,
                                                           version: str, datatype: str, status: str,
                                                           message: str) -> None:
    tensor = triton.InferInput("input", [1, 4], datatype)
    tensor.set_data_from_numpy(np.array([[5, 3, 1, 1]], dtype=np.int32 if datatype == "INT32" else np.float32),
                               binary_data=False)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(name, [tensor], model_version=version)
    assert caught.value.status() == status and message in caught.value.message()


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def refused_infers(url: str) -> float:
    """Return /metrics' count of 400s answered by POST /v2/models/{name}/infer (one server process: up to date)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        families = text_string_to_metric_families(answer.read().decode())
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == "iris_requests_total"
               and sample.labels == {"endpoint": "v2.model_infer", "status": "400"})


def test_hand_built_json_named_fp64_tensors_and_errors(granian_url: str, model: ServedModel, rows: np.ndarray) -> None:
    infer = f"{granian_url}/v2/models/{MODEL}/infer"
    named = [{"name": name, "shape": [len(rows)], "datatype": "FP64", "data": rows[:, i].tolist()}
             for i, name in enumerate(FEATURES)]
    status, body = post(infer, {"id": "named", "inputs": named})
    assert status == 200 and body["id"] == "named" and body["outputs"][0]["data"] == expected(model, rows)[0]
    matrix = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[7.7, 2.6, 6.9, 2.3]]}
    refused_before = refused_infers(granian_url)
    for bad, message in (({"datatype": "BYTES"}, "datatype must be FP32 or FP64"),
                         ({"shape": [2, 4]}, "data must hold 8 values"),
                         ({"data": [[7.7, 2.6, 6.9, -2.3]]}, "row 0, column petal_width")):
        status, body = post(infer, {"inputs": [{**matrix, **bad}]})
        assert status == 400 and message in body["error"], body
    assert post(f"{granian_url}/v2/models/iris/infer", {"inputs": [matrix]}) == (
        404, {"error": f"unknown model 'iris'; this server serves '{MODEL}'"})
    assert refused_infers(granian_url) == refused_before + 3  # counted as /v1's answers are, by endpoint and status


def test_with_api_keys_infer_needs_a_key_and_reaches_the_worker_with_it(stack_env: dict[str, str],
                                                                        worker: WorkerProcess) -> None:
    key = "v2-integration-key-0123456789"
    client = create_app(make_settings(stack_env, api_keys=SecretStr(key))).test_client()
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [7.7, 2.6, 6.9, 2.3]}]}
    refused = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert refused.status_code == 401 and set(refused.get_json()) == {"error"}
    answered = client.post(f"/v2/models/{MODEL}/infer", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answered.status_code == 200 and answered.get_json()["outputs"][0]["data"] == ["Iris-virginica"]
