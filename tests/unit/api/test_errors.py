"""Every failure the API can foresee answers the seed's error envelope, without a stack trace."""

import json
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE

# Nothing listens on port 1: every test here runs with Redis down.
DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def app() -> Flask:
    return create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, tag="9.9.9", batch_max_rows=3))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def assert_envelope(body: dict[str, Any], status: int, raised: str) -> dict[str, Any]:
    assert body["message"] == "failed"
    assert body["version"] == "9.9.9"
    error = body["error"]
    assert set(error) == {"raised", "raisedOn", "message", "code"}
    assert error["code"] == str(status) and error["raised"] == raised
    assert "Traceback" not in error["message"] and "<html" not in error["message"].lower()
    return error  # type: ignore[no-any-return]


def test_missing_field_is_a_400_naming_the_field(client: FlaskClient) -> None:
    payload = {k: v for k, v in SEED_EXAMPLE.items() if k != "petal_width"}
    resp = client.post("/v1/classify", json=payload)
    assert resp.status_code == 400
    error = assert_envelope(resp.get_json(), 400, "ValidationError")
    assert error["raisedOn"] == "ApiClassify" and "petal_width" in error["message"]


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/classify/async"])
def test_strings_are_not_numbers(client: FlaskClient, path: str) -> None:
    resp = client.post(path, json={**SEED_EXAMPLE, "sepal_width": "2.6"})
    assert resp.status_code == 400
    assert "sepal_width" in assert_envelope(resp.get_json(), 400, "ValidationError")["message"]


def test_invalid_json_is_a_400(client: FlaskClient) -> None:
    resp = client.post("/v1/classify", data="{not json", content_type="application/json")
    assert resp.status_code == 400
    assert_envelope(resp.get_json(), 400, "ValidationError")


def test_non_json_content_type_is_a_415(client: FlaskClient) -> None:
    resp = client.post("/v1/classify", data=json.dumps(SEED_EXAMPLE), content_type="text/plain")
    assert resp.status_code == 415
    assert_envelope(resp.get_json(), 415, "UnsupportedMediaType")


def test_unknown_route_is_a_404_envelope(client: FlaskClient) -> None:
    resp = client.get("/v2/nothing")
    assert resp.status_code == 404 and resp.is_json
    assert_envelope(resp.get_json(), 404, "NotFound")


def test_wrong_method_is_a_405_envelope_with_allow(client: FlaskClient) -> None:
    resp = client.get("/v1/classify")
    assert resp.status_code == 405 and "POST" in resp.headers["Allow"]
    assert_envelope(resp.get_json(), 405, "MethodNotAllowed")


def test_oversized_body_is_a_413_envelope(client: FlaskClient) -> None:
    resp = client.post("/v1/classify", data=b"[" + b"1," * 600_000 + b"1]", content_type="application/json")
    assert resp.status_code == 413
    assert_envelope(resp.get_json(), 413, "RequestEntityTooLarge")


def test_batch_over_the_row_limit_is_a_413(client: FlaskClient) -> None:
    resp = client.post("/v1/classify/batch", json={"instances": [SEED_EXAMPLE] * 4})
    assert resp.status_code == 413
    assert "at most 3" in assert_envelope(resp.get_json(), 413, "PayloadTooLarge")["message"]


def test_batch_error_names_the_row_index(client: FlaskClient) -> None:
    resp = client.post("/v1/classify/batch", json={"instances": [SEED_EXAMPLE, {}]})
    assert resp.status_code == 400
    assert "instances.1.sepal_length" in assert_envelope(resp.get_json(), 400, "ValidationError")["message"]


def test_empty_batch_is_a_400(client: FlaskClient) -> None:
    resp = client.post("/v1/classify/batch", json={"instances": []})
    assert resp.status_code == 400
    assert "instances" in assert_envelope(resp.get_json(), 400, "ValidationError")["message"]


def test_malformed_task_id_is_a_404(client: FlaskClient) -> None:
    resp = client.get("/v1/tasks/not-a-uuid")
    assert resp.status_code == 404
    assert_envelope(resp.get_json(), 404, "NotFound")


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/classify/async", "/v1/classify/batch"])
def test_redis_down_is_a_fast_503_not_a_hang(client: FlaskClient, path: str) -> None:
    body = {"instances": [SEED_EXAMPLE]} if path.endswith("batch") else SEED_EXAMPLE
    started = time.monotonic()
    resp = client.post(path, json=body)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert_envelope(resp.get_json(), 503, "QueueUnavailable")
    assert time.monotonic() - started < 10


def test_readyz_is_503_with_retry_after_within_5_seconds_when_redis_is_down(client: FlaskClient) -> None:
    started = time.monotonic()
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert_envelope(resp.get_json(), 503, "QueueUnavailable")
    assert time.monotonic() - started < 5


def test_polling_a_task_while_redis_is_down_is_a_503_not_a_500(client: FlaskClient) -> None:
    resp = client.get("/v1/tasks/0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert_envelope(resp.get_json(), 503, "QueueUnavailable")


def test_livez_answers_without_redis(client: FlaskClient) -> None:
    resp = client.get("/livez")
    assert resp.status_code == 200 and resp.get_json()["data"] == {"status": "alive"}


def test_unexpected_errors_are_a_500_envelope_without_a_trace(app: Flask) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    resp = app.test_client().get("/boom")
    assert resp.status_code == 500
    error = assert_envelope(resp.get_json(), 500, "InternalServerError")
    assert "secret internals" not in error["message"]
    assert resp.headers["X-Request-ID"] in error["message"]  # what an operator greps the log for


def test_a_5xx_http_exception_does_not_carry_its_description(app: Flask) -> None:
    from werkzeug.exceptions import InternalServerError

    @app.get("/abort")
    def abort() -> None:
        raise InternalServerError(description="db password is hunter2")

    resp = app.test_client().get("/abort")
    assert resp.status_code == 500 and "hunter2" not in resp.get_data(as_text=True)
    assert_envelope(resp.get_json(), 500, "InternalServerError")


def test_a_redis_error_no_route_caught_is_a_503_not_a_500(app: Flask) -> None:
    import redis

    @app.get("/lost")
    def lost() -> None:
        raise redis.ConnectionError("Error 111 connecting to 10.0.0.5:6379")

    resp = app.test_client().get("/lost")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert "10.0.0.5" not in assert_envelope(resp.get_json(), 503, "QueueUnavailable")["message"]
