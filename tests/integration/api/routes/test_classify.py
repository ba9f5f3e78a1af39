"""The HTTP contract end to end: Flask app -> Redis -> celery worker -> MLflow champion."""

import time
import uuid

import redis
from flask.testing import FlaskClient

from shared.schemas import LABELS
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE, poll_until_done


def test_seed_example_is_iris_virginica_in_the_seeds_envelope(client: FlaskClient) -> None:
    resp = client.post("/v1/classify", json=SEED_EXAMPLE)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["message"] == "success" and body["error"] is None and body["version"] == "test"
    data = body["data"]
    assert data["pred_label"] == "Iris-virginica"
    assert 0.5 < data["pred_confidence"] <= 1.0
    assert set(data["probabilities"]) == set(LABELS)
    assert abs(sum(data["probabilities"].values()) - 1.0) < 1e-9
    assert data["model_name"] == "iris-classifier" and data["model_version"].isdigit()
    uuid.UUID(data["task_id"])


def test_shuffled_keys_give_the_same_answer(client: FlaskClient) -> None:
    reordered = {k: SEED_EXAMPLE[k] for k in ("petal_width", "sepal_width", "petal_length", "sepal_length")}
    first = client.post("/v1/classify", json=SEED_EXAMPLE).get_json()["data"]
    second = client.post("/v1/classify", json=reordered).get_json()["data"]
    assert first["pred_label"] == second["pred_label"] == "Iris-virginica"
    assert first["probabilities"] == second["probabilities"]


def test_setosa_is_told_apart(client: FlaskClient) -> None:
    setosa = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert client.post("/v1/classify", json=setosa).get_json()["data"]["pred_label"] == "Iris-setosa"


def test_missing_field_is_a_400_and_queues_nothing(client: FlaskClient) -> None:
    resp = client.post("/v1/classify", json={"sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3})
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["raised"] == "ValidationError" and error["code"] == "400"
    assert "sepal_length" in error["message"]


def test_async_answers_202_then_polls_to_success(client: FlaskClient) -> None:
    resp = client.post("/v1/classify/async", json=SEED_EXAMPLE)
    assert resp.status_code == 202
    data = resp.get_json()["data"]
    assert data["status"] == "PENDING"
    assert resp.headers["Location"] == data["status_url"] == f"/v1/tasks/{data['task_id']}"
    done = poll_until_done(client, data["status_url"])
    assert done["status"] == "SUCCESS" and done["error"] is None
    assert done["result"]["pred_label"] == "Iris-virginica"


def test_sync_task_ids_can_be_polled_afterwards(client: FlaskClient) -> None:
    task_id = client.post("/v1/classify", json=SEED_EXAMPLE).get_json()["data"]["task_id"]
    data = client.get(f"/v1/tasks/{task_id}").get_json()["data"]
    assert data["status"] == "SUCCESS" and data["result"]["pred_label"] == "Iris-virginica"


def test_a_sync_request_stores_one_result_under_its_own_task_id(client: FlaskClient, settings: Settings) -> None:
    backend = redis.Redis.from_url(settings.celery_result_backend)
    before = set(backend.scan_iter("celery-task-meta-*"))
    task_id = client.post("/v1/classify", json=SEED_EXAMPLE).get_json()["data"]["task_id"]
    time.sleep(0.5)  # the batch message's own result, if any were stored, would land after the reply
    assert set(backend.scan_iter("celery-task-meta-*")) - before == {f"celery-task-meta-{task_id}".encode()}
    # Answered in-band: kept only while a request could still wait for it, not for a poll URL's 10 minutes.
    assert 0 < backend.ttl(f"celery-task-meta-{task_id}") <= settings.row_result_hold_seconds


def test_unknown_task_id_is_a_404(client: FlaskClient) -> None:
    resp = client.get(f"/v1/tasks/{uuid.uuid4()}")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "404"


def test_batch_answers_every_row_in_order(client: FlaskClient) -> None:
    setosa = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    resp = client.post("/v1/classify/batch", json={"instances": [SEED_EXAMPLE, setosa, SEED_EXAMPLE]})
    assert resp.status_code == 200
    labels = [row["pred_label"] for row in resp.get_json()["data"]]
    assert labels == ["Iris-virginica", "Iris-setosa", "Iris-virginica"]


def test_readyz_reports_the_workers_model(client: FlaskClient) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200
    workers = resp.get_json()["data"]["workers"]
    assert any(info["model_name"] == "iris-classifier" for info in workers.values())
