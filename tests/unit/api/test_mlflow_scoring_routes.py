"""/invocations, /ping and /version: MLflow's answers on success, the seed's envelope on every error."""

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import create_app
from api.errors import QueueFull, QueueUnavailable, TaskFailed, TimedOut
from api.extension import KEY
from shared.schemas import FEATURES
from shared.settings import Settings
from tests.unit.api.worker_fakes import FakeReadiness, FakeWorkers

DOWN = "redis://127.0.0.1:1/0"
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 2.6, 6.9, 2.3]]
LABELS = ["Iris-setosa", "Iris-virginica"]


class FakeService:
    """Answer each batch by ``answer`` (labels by default) and record the rows it was given."""

    def __init__(self) -> None:
        self.batches: list[list[list[float]]] = []
        self.answer: Callable[[list[list[float]]], list[dict[str, Any]]] = lambda rows: [
            {"pred_label": LABELS[index % 2]} for index in range(len(rows))]

    def classify_batch(self, rows: list[list[float]]) -> tuple[str, list[dict[str, Any]]]:
        self.batches.append(rows)
        return "task-1", self.answer(rows)


@dataclasses.dataclass
class Stack:
    app: Flask
    client: FlaskClient
    service: FakeService
    workers: FakeWorkers


def build(**overrides: Any) -> Stack:
    app = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, tag="9.9.9", **overrides))
    fake, workers = FakeService(), FakeWorkers()
    app.extensions[KEY] = dataclasses.replace(app.extensions[KEY], service=fake, readiness=FakeReadiness(workers))
    return Stack(app, app.test_client(), fake, workers)


@pytest.fixture
def stack() -> Stack:
    return build()


def test_invocations_answers_mlflow_predictions_in_row_order(stack: Stack) -> None:
    resp = stack.client.post("/invocations", json={"dataframe_split": {"columns": list(FEATURES), "data": ROWS}})
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.get_json() == {"predictions": LABELS}
    assert stack.service.batches == [ROWS]


@pytest.mark.parametrize("body", [{"dataframe_records": [dict(zip(FEATURES, r, strict=True)) for r in ROWS]},
                                  {"instances": ROWS}, {"inputs": {f: [r[i] for r in ROWS] for i, f in
                                                                   enumerate(FEATURES)}}])
def test_every_format_reaches_one_batch_task(stack: Stack, body: dict[str, Any]) -> None:
    assert stack.client.post("/invocations", json=body).get_json() == {"predictions": LABELS}
    assert len(stack.service.batches) == 1 and len(stack.service.batches[0]) == 2


def test_utf8_charset_is_accepted(stack: Stack) -> None:
    resp = stack.client.post("/invocations", data=b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}',
                             content_type="application/json; charset=UTF-8")
    assert resp.status_code == 200


@pytest.mark.parametrize("content_type", ["text/csv", "application/vnd.apache.parquet", "text/plain",
                                          "application/json; charset=latin-1", "application/merge-patch+json"])
def test_anything_but_json_is_a_415_envelope(stack: Stack, content_type: str) -> None:
    resp = stack.client.post("/invocations", data=b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}', content_type=content_type)
    assert resp.status_code == 415 and resp.get_json()["error"]["raised"] == "UnsupportedMediaType"
    assert "text/csv" in resp.get_json()["error"]["message"] and stack.service.batches == []


def test_a_bad_body_is_a_400_envelope_naming_the_row_and_field(stack: Stack) -> None:
    resp = stack.client.post("/invocations", json={"inputs": [ROWS[0], [5.1, "3.5", 1.4, 0.2]]})
    body = resp.get_json()
    assert resp.status_code == 400 and body["message"] == "failed" and body["version"] == "9.9.9"
    assert body["error"]["raised"] == "ValidationError" and body["error"]["raisedOn"] == "ApiInvocations"
    assert "instances.1.sepal_width" in body["error"]["message"] and stack.service.batches == []


def test_a_body_in_no_format_is_a_400_envelope(stack: Stack) -> None:
    resp = stack.client.post("/invocations", json={"columns": list(FEATURES), "data": ROWS})
    assert resp.status_code == 400 and "exactly one of the fields" in resp.get_json()["error"]["message"]


def test_more_rows_than_batch_max_rows_is_a_413_envelope() -> None:
    stack = build(batch_max_rows=1)
    resp = stack.client.post("/invocations", json={"instances": ROWS})
    assert resp.status_code == 413 and resp.get_json()["error"]["raised"] == "PayloadTooLarge"
    assert stack.service.batches == []


@pytest.mark.parametrize(("error", "status", "raised"), [
    (lambda: QueueUnavailable(), 503, "QueueUnavailable"),
    (lambda: QueueFull(), 503, "QueueFull"),  # the broker refused the table (a nack under publisher confirms)
    (lambda: TimedOut("0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab", 10), 504, "Timeout"),
    (lambda: TaskFailed("0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab", "this batch"), 500, "TaskFailed"),
])
def test_queue_and_worker_failures_answer_the_seed_error_envelope(stack: Stack, error: Callable[[], Exception],
                                                                  status: int, raised: str) -> None:
    def fail(rows: list[list[float]]) -> list[dict[str, Any]]:
        raise error()

    stack.service.answer = fail
    resp = stack.client.post("/invocations", json={"inputs": ROWS})
    assert resp.status_code == status and resp.get_json()["error"]["raised"] == raised
    if status == 504:
        assert resp.headers["Location"] == "/v1/tasks/0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab"
    if status == 503:
        assert resp.headers["Retry-After"] == "1"


def test_get_on_invocations_is_a_405_envelope(stack: Stack) -> None:
    resp = stack.client.get("/invocations")
    assert resp.status_code == 405 and resp.headers["Allow"] and resp.get_json()["message"] == "failed"


def test_ping_answers_200_like_mlflow(stack: Stack) -> None:
    resp = stack.client.get("/ping")
    assert resp.status_code == 200 and resp.data == b"\n"


def test_version_names_the_service_and_the_served_model_versions(stack: Stack) -> None:
    info = {"model_name": "iris", "model_run_id": "r", "labels": [], "loaded_at": 1.0}
    stack.workers.found = {"a@h": {**info, "model_version": "10"}, "b@h": {**info, "model_version": "9"},
                           "c@h": {**info, "model_version": "10"}}
    body = stack.client.get("/version").get_json()
    assert body["service_version"] == "9.9.9" and body["model_versions"] == ["9", "10"]
    assert body["workers"]["b@h"] == {"model_name": "iris", "model_version": "9", "model_run_id": "r"}


def test_version_says_null_when_no_worker_answers(stack: Stack) -> None:
    resp = stack.client.get("/version")
    assert resp.status_code == 200
    assert resp.get_json() == {"service_version": "9.9.9", "model_versions": None, "workers": {}}


def test_version_says_null_when_the_worker_check_hangs(stack: Stack) -> None:
    stack.workers.hangs = True
    resp = stack.client.get("/version")
    assert resp.status_code == 200 and resp.get_json()["model_versions"] is None


def test_version_does_not_ask_workers_while_the_circuit_is_open(stack: Stack) -> None:
    stack.app.extensions[KEY].circuit.trip()
    assert stack.client.get("/version").get_json()["model_versions"] is None
    assert stack.workers.calls == 0


def test_invocations_needs_the_api_key_when_api_keys_is_set_and_ping_and_version_do_not() -> None:
    key = "k-123-0123456789"
    stack = build(api_keys=SecretStr(key))
    body = {"inputs": ROWS}
    refused = stack.client.post("/invocations", json=body)
    assert refused.status_code == 401 and refused.get_json()["error"]["raisedOn"] == "ApiInvocations"
    assert stack.client.post("/invocations", json=body, headers={"X-API-Key": key}).status_code == 200
    assert stack.client.post("/invocations", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert stack.client.get("/ping").status_code == 200 and stack.client.get("/version").status_code == 200
    assert len(stack.service.batches) == 2
