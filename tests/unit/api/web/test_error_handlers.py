"""Every ApiError answers the seed's envelope with its own status and name; every 503 says when to retry."""

import inspect
from typing import Any

import pytest
from amqp.exceptions import MessageNacked
from flask import Flask
from kombu.exceptions import OperationalError

from api import create_app, errors
from shared.settings import Settings

DOWN = "redis://127.0.0.1:1/0"

# Every ApiError in api/errors.py, found rather than listed, so a new one is covered (or fails here) at once.
API_ERRORS = sorted((cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                     if issubclass(cls, errors.ApiError) and cls.__module__ == errors.__name__),
                    key=lambda cls: cls.__name__)

# An argument for each constructor parameter the errors take, by name.
SAMPLE_ARGUMENTS: dict[str, Any] = {"message": "something went wrong", "depth": 10_000, "seconds": 10.0,
                                    "task_id": "0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab"}


def build(cls: type[errors.ApiError]) -> errors.ApiError:
    """Construct ``cls`` with a sample for each required argument (a new parameter name fails loudly here)."""
    parameters = inspect.signature(cls).parameters.values()
    return cls(**{p.name: SAMPLE_ARGUMENTS[p.name] for p in parameters
                  if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD})


@pytest.fixture
def app() -> Flask:
    return create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, tag="9.9.9"))


def test_the_errors_module_defines_the_errors_the_api_raises() -> None:
    assert {cls.__name__ for cls in API_ERRORS} >= {"ValidationFailed", "Unauthorized", "NotFound",
                                                   "PayloadTooLarge", "TaskFailed", "QueueUnavailable",
                                                   "QueueFull", "NoWorkers", "TimedOut"}


@pytest.mark.parametrize("cls", API_ERRORS, ids=lambda cls: cls.__name__)
def test_each_api_error_answers_its_own_status_and_name(app: Flask, cls: type[errors.ApiError]) -> None:
    @app.get("/raise")
    def raise_it() -> str:
        raise build(cls)

    resp = app.test_client().get("/raise")
    body = resp.get_json()
    assert resp.status_code == cls.status and body["message"] == "failed" and body["version"] == "9.9.9"
    assert body["error"]["code"] == str(cls.status) and body["error"]["raised"] == cls.raised
    assert body["error"]["raisedOn"] == "ApiRaiseIt"
    if cls.status == 503 or cls is errors.IdempotencyKeyInUse:  # the key's first request is still answering
        assert resp.headers["Retry-After"] == "1"
    else:
        assert "Retry-After" not in resp.headers


def test_queue_full_names_a_depth_it_knows_and_none_when_the_broker_refused() -> None:
    assert errors.QueueFull(10_000).message == "the queue holds 10000 tasks; try again shortly"
    assert errors.QueueFull(3, 64.0).message == "the queue holds 64.0 MB of tasks; try again shortly"
    refused = errors.QueueFull()
    assert refused.message == errors.QueueFull.refused and "broker refused" in refused.message
    assert not any(char.isdigit() for char in refused.message)
    assert refused.status == 503 and refused.raised == "QueueFull" and refused.headers == {"Retry-After": "1"}


def nacked_through_kombu() -> Exception:
    error = OperationalError("")
    error.__cause__ = MessageNacked()
    return error


@pytest.mark.parametrize(("failure", "raised"), [
    (MessageNacked, "QueueFull"),
    (nacked_through_kombu, "QueueFull"),
    (lambda: OperationalError("[Errno 111] Connection refused"), "QueueUnavailable"),
], ids=["nack", "kombu-wrapped-nack", "connection-refused"])
def test_a_broker_failure_no_layer_caught_answers_its_503(app: Flask, failure: Any, raised: str) -> None:
    @app.get("/raise")
    def raise_it() -> str:
        raise failure()

    resp = app.test_client().get("/raise")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.get_json()["error"]["raised"] == raised
