"""JSON log lines carry the request id and task id of the request being served."""

import json
import logging
import subprocess
import sys

from shared.logs import LOG_CONTEXT, RequestContextFilter, json_formatter, set_task_id
from tests.helpers import ROOT


def format_line(record: logging.LogRecord) -> dict[str, object]:
    """Return ``record`` as the entry points' handler writes it."""
    RequestContextFilter().filter(record)
    return json.loads(json_formatter().format(record))  # type: ignore[no-any-return]


def make_record(message: str = "hello", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("api.test", logging.WARNING, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_a_line_is_one_json_object_with_level_logger_message_and_time() -> None:
    line = format_line(make_record())
    assert line["level"] == "WARNING" and line["logger"] == "api.test" and line["message"] == "hello"
    assert str(line["time"]).endswith("+00:00")


def test_lines_carry_the_current_request_and_task_ids() -> None:
    token = LOG_CONTEXT.set(["req-1", None])
    try:
        set_task_id("task-1")
        line = format_line(make_record())
    finally:
        LOG_CONTEXT.reset(token)
    assert line["request_id"] == "req-1" and line["task_id"] == "task-1"


def test_lines_outside_a_request_have_no_ids() -> None:
    line = format_line(make_record())
    assert "request_id" not in line and "task_id" not in line


def test_an_explicit_id_wins_over_the_context() -> None:
    token = LOG_CONTEXT.set(["req-1", None])
    try:
        line = format_line(make_record(request_id="other"))
    finally:
        LOG_CONTEXT.reset(token)
    assert line["request_id"] == "other"


def test_exceptions_are_logged_on_one_line_with_their_trace() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = json_formatter().format(record)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exc_info"]


def test_the_logging_config_sends_json_lines_from_every_logger_at_the_level_given() -> None:
    # In a fresh interpreter: dictConfig replaces the process's handlers, pytest's included.
    code = ("import logging; import logging.config as c; from shared.logs import logging_config as j; "
            "c.dictConfig(j('warning')); "
            "logging.getLogger('anything').info('dropped'); logging.getLogger('anything').warning('kept')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [("anything", "kept")]


def test_a_password_in_a_url_never_reaches_a_line_message_exception_or_field() -> None:
    url = "redis://:s3cr3t@cache:6379/0"
    try:
        raise ConnectionError(f"Cannot connect to {url}")
    except ConnectionError:
        record = logging.LogRecord("kombu", logging.ERROR, __file__, 1, "broker %s unreachable", (url,),
                                   sys.exc_info())
    record.__dict__["broker"] = url
    text = json_formatter().format(record)
    line = json.loads(text)
    assert "s3cr3t" not in text
    assert line["message"] == "broker redis://:***@cache:6379/0 unreachable"
    assert "ConnectionError: Cannot connect to redis://:***@cache:6379/0" in line["exc_info"]
    assert line["broker"] == "redis://:***@cache:6379/0"


def test_the_entry_points_handler_redacts_what_any_library_logs() -> None:
    code = ("import logging; import logging.config as c; from shared.logs import logging_config as j; "
            "c.dictConfig(j('info')); "
            "logging.getLogger('celery.worker.consumer').error('Cannot connect to %s', 'amqp://u:s3cr3t@mq//')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert "s3cr3t" not in done.stderr and "amqp://u:***@mq//" in done.stderr
