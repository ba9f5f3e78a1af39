"""/v2 routes: the protocol's answers on success, ``{"error": ...}`` with /v1's status and headers on every failure."""

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import create_app
from api.errors import NoWorkers, QueueFull, QueueUnavailable, TaskFailed, TimedOut
from api.extension import KEY
from shared.schemas import FEATURES, LABELS
from shared.settings import Settings
from tests.unit.api.worker_fakes import FakeReadiness, FakeWorkers

DOWN = "redis://127.0.0.1:1/0"
TASK = "0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab"
MODEL = "/v2/models/iris-classifier"
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 2.6, 6.9, 2.3]]
KEY_VALUE = "v2-unit-key-0123456789"


def answer(label: str = "Iris-setosa", version: str = "3") -> dict[str, Any]:
    return {"pred_label": label, "pred_confidence": 0.9, "probabilities": dict(zip(LABELS, (0.9, 0.06, 0.04),
                                                                                   strict=True)),
            "model_name": "iris-classifier", "model_version": version, "model_run_id": "r"}


class FakeService:
    """Answer rows as a worker would; record which method each request took."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.error: Callable[[], Exception] | None = None

    def classify(self, row: list[float]) -> tuple[str, dict[str, Any]]:
        self.calls.append(("classify", row))
        if self.error is not None:
            raise self.error()
        return "row-task", answer()

    def classify_batch(self, rows: list[list[float]]) -> tuple[str, list[dict[str, Any]]]:
        self.calls.append(("classify_batch", rows))
        if self.error is not None:
            raise self.error()
        return "batch-task", [answer("Iris-virginica") for _ in rows]


@dataclasses.dataclass
class Stack:
    app: Flask
    client: FlaskClient
    service: FakeService
    readiness: FakeReadiness


def build(**overrides: Any) -> Stack:
    app = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, tag="9.9.9", **overrides))
    fake, readiness = FakeService(), FakeReadiness(FakeWorkers({"w1": answer(), "w2": answer(version="4")}))
    app.extensions[KEY] = dataclasses.replace(app.extensions[KEY], service=fake, readiness=readiness)
    return Stack(app, app.test_client(), fake, readiness)


@pytest.fixture
def stack() -> Stack:
    return build()


def infer_body(rows: list[list[float]] = ROWS, **fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}], **fields}


def test_live_ready_and_server_metadata_answer_the_protocol(stack: Stack) -> None:
    assert stack.client.get("/v2/health/live").get_json() == {"live": True}
    assert stack.client.get("/v2/health/ready").get_json() == {"ready": True}
    assert stack.client.get("/v2").get_json() == {"name": "iris-queue-serving", "version": "9.9.9",
                                                  "extensions": ["binary_tensor_data"]}


@pytest.mark.parametrize("failure", [QueueUnavailable, NoWorkers])
@pytest.mark.parametrize("path", ["/v2/health/ready", f"{MODEL}/ready", f"{MODEL}/versions/3/ready"])
def test_not_ready_is_a_503_error_with_retry_after(stack: Stack, failure: Callable[[], Exception], path: str) -> None:
    stack.readiness.failure = failure
    resp = stack.client.get(path)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert set(resp.get_json()) == {"error"}
    assert stack.client.get("/v2/health/live").status_code == 200  # live stays live


def test_model_metadata_names_the_tensors_and_the_served_versions(stack: Stack) -> None:
    body = stack.client.get(MODEL).get_json()
    assert body["name"] == "iris-classifier" and body["versions"] == ["3", "4"]
    assert body["platform"] == "sklearn_skops"
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4], "parameters": {
        "columns": ",".join(FEATURES), "datatypes": "FP32,FP64"}}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("label", "BYTES", [-1]), ("probabilities", "FP32", [-1, 3])]
    assert body["outputs"][1]["parameters"] == {"classes": ",".join(LABELS)}
    assert stack.client.get(f"{MODEL}/versions/4").get_json() == body


def test_model_metadata_while_redis_is_down_lists_no_version_and_versioned_routes_answer_503(stack: Stack) -> None:
    stack.readiness.workers.hangs = True
    assert stack.client.get(MODEL).get_json()["versions"] == []
    resp = stack.client.get(f"{MODEL}/versions/3")
    assert resp.status_code == 503 and resp.get_json() == {"error": "Redis does not answer"}
    stack.readiness.workers.hangs, stack.readiness.workers.found = False, {}
    assert stack.client.get(f"{MODEL}/versions/3/ready").status_code == 503  # no worker answers


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v2/models/iris"), ("GET", "/v2/models/iris/ready"), ("POST", "/v2/models/iris/infer"),
    ("GET", "/v2/models/iris/versions/3"), ("POST", "/v2/models/iris/versions/3/infer")])
def test_an_unknown_model_is_a_404_error_naming_the_served_one(stack: Stack, method: str, path: str) -> None:
    resp = stack.client.open(path, method=method, json=infer_body())
    assert resp.status_code == 404
    assert resp.get_json() == {"error": "unknown model 'iris'; this server serves 'iris-classifier'"}
    assert stack.service.calls == []


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"{MODEL}/versions/7"), ("GET", f"{MODEL}/versions/7/ready"), ("POST", f"{MODEL}/versions/7/infer")])
def test_a_version_no_worker_serves_is_a_404(stack: Stack, method: str, path: str) -> None:
    resp = stack.client.open(path, method=method, json=infer_body())
    assert resp.status_code == 404 and resp.get_json() == {
        "error": "model 'iris-classifier' has no version '7' served; served: 3, 4"}
    assert stack.service.calls == []


def test_infer_of_n_rows_is_one_batch_task_and_echoes_the_request_id(stack: Stack) -> None:
    resp = stack.client.post(f"{MODEL}/versions/3/infer", json=infer_body(id="req-1"))
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["model_name"] == "iris-classifier" and body["model_version"] == "3" and body["id"] == "req-1"
    assert body["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [2],
                                  "data": ["Iris-virginica", "Iris-virginica"]}
    assert body["outputs"][1]["shape"] == [2, 3] and body["outputs"][1]["data"] == [0.9, 0.06, 0.04] * 2
    assert stack.service.calls == [("classify_batch", ROWS)]


def test_infer_of_one_row_goes_through_the_edge_batcher_and_answers_the_task_id(stack: Stack) -> None:
    body = stack.client.post(f"{MODEL}/infer", json=infer_body([ROWS[0]], outputs=[{"name": "label"}])).get_json()
    assert body["id"] == "row-task" and [o["name"] for o in body["outputs"]] == ["label"]
    assert stack.service.calls == [("classify", ROWS[0])]


def test_infer_takes_any_content_type_as_tritonclient_sends_none(stack: Stack) -> None:
    resp = stack.client.post(f"{MODEL}/infer", data=b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": '
                                                     b'"FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}', content_type="")
    assert resp.status_code == 200


def test_a_bad_body_is_a_400_error_and_nothing_is_queued(stack: Stack) -> None:
    resp = stack.client.post(f"{MODEL}/infer", json=infer_body([[5.1, 3.5, 1.4]]))
    assert resp.status_code == 400 and "data must hold 4 values" in resp.get_json()["error"]
    assert stack.service.calls == []


def test_more_rows_than_batch_max_rows_is_a_413_error() -> None:
    stack = build(batch_max_rows=1)
    resp = stack.client.post(f"{MODEL}/infer", json=infer_body())
    assert resp.status_code == 413 and resp.get_json() == {"error": "2 rows; at most 1 per request"}


def test_a_body_over_the_size_limit_is_a_413_error(stack: Stack) -> None:
    resp = stack.client.post(f"{MODEL}/infer", data=b"x" * 1_000_001)
    assert resp.status_code == 413 and set(resp.get_json()) == {"error"}


@pytest.mark.parametrize(("error", "status", "header"), [
    (QueueUnavailable, 503, "Retry-After"), (lambda: QueueFull(10), 503, "Retry-After"),
    (lambda: TaskFailed(TASK, "this batch"), 500, None)])
def test_queue_and_worker_failures_answer_their_status_in_the_error_object(
        stack: Stack, error: Callable[[], Exception], status: int, header: str | None) -> None:
    stack.service.error = error
    resp = stack.client.post(f"{MODEL}/infer", json=infer_body())
    assert resp.status_code == status and set(resp.get_json()) == {"error"}
    assert header is None or header in resp.headers


def test_a_timeout_is_a_504_naming_the_task_and_its_poll_url(stack: Stack) -> None:
    stack.service.error = lambda: TimedOut(TASK, 10)
    resp = stack.client.post(f"{MODEL}/infer", json=infer_body())
    assert resp.status_code == 504 and resp.headers["Location"] == f"/v1/tasks/{TASK}"
    assert resp.get_json() == {"error": f"no worker answered within 10 s; task {TASK} stays queued: poll GET "
                                        f"/v1/tasks/{TASK} (answered in the /v1 envelope)"}


def test_an_unexpected_error_is_a_500_naming_only_the_request_id(stack: Stack) -> None:
    stack.service.error = lambda: RuntimeError("secret detail")
    resp = stack.client.post(f"{MODEL}/infer", json=infer_body(), headers={"X-Request-ID": "req-77"})
    assert resp.status_code == 500 and resp.get_json() == {"error": "internal error; request id req-77"}


def test_with_api_keys_the_model_routes_need_a_key_and_answer_401_as_an_error_object() -> None:
    stack = build(api_keys=SecretStr(KEY_VALUE))
    resp = stack.client.post(f"{MODEL}/infer", json=infer_body())
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert set(resp.get_json()) == {"error"} and stack.service.calls == []
    assert stack.client.get(MODEL).status_code == 401
    assert stack.client.post(f"{MODEL}/infer", json=infer_body(), headers={"X-API-Key": KEY_VALUE}).status_code == 200
    assert stack.client.get(MODEL, headers={"Authorization": f"Bearer {KEY_VALUE}"}).status_code == 200
    for public in ("/v2", "/v2/health/live", "/v2/health/ready"):  # as /livez and /readyz
        assert stack.client.get(public).status_code == 200, public


def test_every_v2_answer_is_counted_under_its_endpoint(stack: Stack) -> None:
    stack.client.post(f"{MODEL}/infer", json=infer_body())
    stack.client.get("/v2/models/nope")
    scrape = stack.client.get("/metrics").get_data(as_text=True)
    assert 'iris_requests_total{endpoint="v2.model_infer",status="200"} 1.0' in scrape
    assert 'iris_requests_total{endpoint="v2.model_metadata",status="404"} 1.0' in scrape
