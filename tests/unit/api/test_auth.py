"""API keys: /v1/* needs one when API_KEYS is set; health stays open; keys compare in constant time."""

import hmac
import io
import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import create_app
from api.auth import ApiKeys, parse_keys, presented_key
from shared.logs import json_formatter
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE

DOWN = "redis://127.0.0.1:1/0"
KEYS = "first-key-123, second-key-456"


def build(api_keys: str | None) -> Flask:
    return create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN,
                               api_keys=SecretStr(api_keys) if api_keys is not None else None))


@pytest.fixture
def client() -> FlaskClient:
    return build(KEYS).test_client()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": "Basic Zmlyc3Qta2V5LTEyMw=="}, {"X-API-Key": ""},
                                     {"Authorization": "Bearer "}, {"X-API-Key": "first-key-123 , second-key-456"}])
def test_a_missing_or_wrong_key_is_a_401_envelope_with_www_authenticate(client: FlaskClient,
                                                                         headers: dict[str, str]) -> None:
    resp = client.post("/v1/classify", json=SEED_EXAMPLE, headers=headers)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    body = resp.get_json()
    assert body["message"] == "failed" and body["error"]["code"] == "401"
    assert body["error"]["raised"] == "Unauthorized" and resp.headers["X-Request-ID"]


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer first-key-123"},
                                     {"Authorization": "bearer second-key-456"}, {"X-API-Key": "second-key-456"}])
def test_a_right_key_passes_to_the_route(client: FlaskClient, headers: dict[str, str]) -> None:
    resp = client.post("/v1/classify", json=SEED_EXAMPLE, headers=headers)
    assert resp.status_code == 503  # past auth; Redis is down in these tests


def test_unknown_v1_paths_need_a_key_too(client: FlaskClient) -> None:
    assert client.get("/v1/secret-route").status_code == 401
    assert client.get("/v1/tasks/0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab").status_code == 401


def test_health_endpoints_stay_open(client: FlaskClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503  # not 401: Redis is down here


def test_without_api_keys_the_api_is_open() -> None:
    for keys in (None, "", " , "):
        resp = build(keys).test_client().post("/v1/classify", json=SEED_EXAMPLE)
        assert resp.status_code == 503  # reached the queue


def test_keys_are_compared_against_every_key_without_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(a) + len(b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = ApiKeys(["k1", "a-much-longer-key-2", "k3"])
    assert keys.accepts("k1") and not keys.accepts("k") and not keys.accepts(None)
    assert len(calls) == 9 and set(calls) == {64}  # three keys each time, all as 32-byte digests


def test_parse_keys_splits_on_commas_and_drops_blanks() -> None:
    assert parse_keys(" a, b ,,c ") == ["a", "b", "c"] and parse_keys(None) == []


def test_presented_key_prefers_the_bearer_token() -> None:
    assert presented_key("Bearer tok", "hdr") == "tok"
    assert presented_key("Basic xyz", "hdr") == "hdr"
    assert presented_key(None, None) is None


def test_keys_never_appear_in_the_logs_or_the_settings_repr(client: FlaskClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        client.post("/v1/classify", json=SEED_EXAMPLE, headers={"Authorization": "Bearer first-key-123"})
        client.post("/v1/classify", json=SEED_EXAMPLE, headers={"X-API-Key": "second-key-456x"})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    text = stream.getvalue() + repr(Settings(api_keys=SecretStr(KEYS)))
    assert "first-key-123" not in text and "second-key-456" not in text
