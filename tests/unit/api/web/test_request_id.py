"""Every response carries X-Request-ID: a sane incoming id is echoed, anything else is replaced."""

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.web.request_id import accept_request_id
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def app() -> Flask:
    app = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize("value", ["abc", "0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab", "a.b:c_d-e", "x" * 128])
def test_a_sane_id_is_kept(value: str) -> None:
    assert accept_request_id(value) == value


@pytest.mark.parametrize("value", [None, "", "x" * 129, "has space", "semi;colon", "new\nline", "ünïcode", "a,b"])
def test_an_insane_id_is_replaced_by_a_new_one(value: str | None) -> None:
    new = accept_request_id(value)
    assert new != value and len(new) == 32 and accept_request_id(new) == new


def test_new_ids_differ() -> None:
    assert len({accept_request_id(None) for _ in range(100)}) == 100


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/livez", 200), ("GET", "/nothing", 404), ("GET", "/v1/classify", 405), ("GET", "/boom", 500),
    ("GET", "/readyz", 503), ("GET", "/v1/tasks/not-a-uuid", 404)])
def test_every_response_echoes_the_clients_request_id(client: FlaskClient, method: str, path: str,
                                                       status: int) -> None:
    resp = client.open(path, method=method, headers={"X-Request-ID": "client-id-1"})
    assert resp.status_code == status
    assert resp.headers["X-Request-ID"] == "client-id-1"


def test_a_validation_error_carries_a_new_id_when_the_client_sent_none(client: FlaskClient) -> None:
    resp = client.post("/v1/classify", json={**SEED_EXAMPLE, "petal_width": "x"})
    assert resp.status_code == 400 and len(resp.headers["X-Request-ID"]) == 32


def test_an_unsafe_id_is_not_echoed(client: FlaskClient) -> None:
    resp = client.get("/livez", headers={"X-Request-ID": "evil\"id<script>"})
    assert resp.headers["X-Request-ID"] != "evil\"id<script>" and len(resp.headers["X-Request-ID"]) == 32


def test_the_500_envelope_names_the_request_id_and_no_exception_text(client: FlaskClient) -> None:
    resp = client.get("/boom", headers={"X-Request-ID": "trace-me"})
    error = resp.get_json()["error"]
    assert resp.status_code == 500 and "trace-me" in error["message"]
    assert "secret internals" not in resp.get_data(as_text=True)
