"""Every ApiError answers the seed's envelope with its own status and name; every 503 says when to retry."""

import inspect
from typing import Any

import pytest
from flask import Flask

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
    if cls.status == 503:
        assert resp.headers["Retry-After"] == "1"
    else:
        assert "Retry-After" not in resp.headers
