"""A Callback-URL the service may not take is a 400 before anything is queued (api/web/callbacks.py)."""

from typing import Any

import pytest
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE

# Nothing listens on port 1: a request that got as far as Redis would answer 503, not 400.
DEAD_REDIS = "redis://127.0.0.1:1/0"


def client(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> FlaskClient:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    return create_app(Settings(celery_broker_url=DEAD_REDIS, celery_result_backend=DEAD_REDIS,
                               api_redis_timeout_seconds=0.5, **settings)).test_client()


def submit(client: FlaskClient, url: str) -> Any:
    return client.post("/v1/classify/async", json=SEED_EXAMPLE, headers={"Callback-URL": url})


def test_a_callback_url_while_webhooks_are_off_is_a_400_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    resp = submit(client(monkeypatch, webhook_allowed_hosts="hooks.example.com"), "https://hooks.example.com/")
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["raised"] == "ValidationError"
    assert "webhooks are off" in error["message"] and "WEBHOOK_SECRET" in error["message"]


@pytest.mark.parametrize(("url", "reason"), [
    ("https://evil.example/hook", "host evil.example is not listed"),
    ("https://169.254.169.254/latest/meta-data/iam/", "never allowed"),
    ("https://[fd00:ec2::254]/", "never allowed"),
    ("https://10.0.0.8/", "not listed"),
    ("http://hooks.example.com/", "scheme must be https"),
    ("https://hooks.example.com/" + "x" * 2048, "longer than 2048"),
])
def test_a_callback_url_the_policy_refuses_is_a_400_naming_the_reason(monkeypatch: pytest.MonkeyPatch, url: str,
                                                                       reason: str) -> None:
    app = client(monkeypatch, webhook_secret="s3cret", webhook_allowed_hosts="hooks.example.com")
    resp = submit(app, url)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["message"].startswith("Callback-URL refused: ") and reason in error["message"]
    assert "token" not in error["message"]


def test_an_allowed_callback_url_goes_on_to_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    app = client(monkeypatch, webhook_secret="s3cret", webhook_allowed_hosts="hooks.example.com")
    resp = submit(app, "https://hooks.example.com/done?token=abc")
    assert resp.status_code == 503  # allowed: it reached the (dead) Redis that counts pending deliveries
    assert "s3cret" not in resp.get_data(as_text=True)


def test_the_openapi_document_lists_callback_url_only_when_webhooks_are_on(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = {"$ref": "#/components/parameters/CallbackUrl"}
    for secret, listed in ((None, False), ("s3cret", True)):
        spec = client(monkeypatch, webhook_secret=secret).get("/openapi.json").get_json()
        assert (ref in spec["paths"]["/v1/classify/async"]["post"]["parameters"]) is listed
        assert ref not in spec["paths"]["/v1/classify/batch"]["post"]["parameters"]
