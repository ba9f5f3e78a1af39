"""Passwords in URLs are hidden wherever a URL is logged, printed or served; everything else stays as it was."""

import json

import pytest

from shared.redact import redact, redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cr3t@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://iris:s3cr3t@redis:6379/1", "redis://iris:***@redis:6379/1"),
    ("rediss://:s3cr3t@cache:6380/0?ssl_cert_reqs=required", "rediss://:***@cache:6380/0?ssl_cert_reqs=required"),
    ("amqp://guest:s3cr3t@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
    ("postgresql+psycopg2://mlflow:s3cr3t@db/mlflow", "postgresql+psycopg2://mlflow:***@db/mlflow"),
    ("https://user:s3cr3t@mlflow.example.com", "https://user:***@mlflow.example.com"),
    # Percent-encoded, and a raw "@": as urllib reads it, the password runs to the authority's last "@".
    ("redis://:p%40ss%3Aw%2Frd@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://:p@ss@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://:@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
])
def test_the_password_of_a_url_is_replaced(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("text", [
    "redis://127.0.0.1:6379/0",
    "redis://iris@127.0.0.1:6379/0",
    "sqlite:////tmp/mlruns.db",
    "http://127.0.0.1:9191/v1/tasks/1234@x",
    "http://host:8080/path?next=a@b",
    "no url here: user:password@host",
])
def test_text_without_a_password_in_a_url_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_a_line_without_a_scheme_is_returned_as_it_is() -> None:
    line = "x" * 1000
    assert redact(line) is line


def test_every_url_in_a_text_is_redacted_and_the_rest_kept() -> None:
    text = ("Cannot connect to redis://:one@a:6379/0 (backend 'redis://u:two@b:6379/1'); "
            "retrying in 2 s. MLflow at postgresql://m:three@db/mlflow")
    assert redact(text) == ("Cannot connect to redis://:***@a:6379/0 (backend 'redis://u:***@b:6379/1'); "
                            "retrying in 2 s. MLflow at postgresql://m:***@db/mlflow")


def test_a_url_inside_a_json_log_line_is_redacted_and_the_line_stays_json() -> None:
    line = json.dumps({"message": 'lost "redis://:p\\"w@host:6379/0" (Error 111)', "logger": "api", "to": "a@b"})
    shown = redact(line)
    assert json.loads(shown)["message"] == 'lost "redis://:***@host:6379/0" (Error 111)'
    assert json.loads(shown)["to"] == "a@b"
