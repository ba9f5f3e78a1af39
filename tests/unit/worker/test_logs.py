"""The worker's log lines are JSON with the task id and request id; at WARNING it logs nothing per task."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
from celery import Celery, signals
from celery._state import _task_stack

from worker.logs import TaskContextFilter, _use_json, log_task


@pytest.fixture
def no_task_log() -> Iterator[None]:
    signals.task_postrun.disconnect(log_task, dispatch_uid="iris-log-task")
    yield
    signals.task_postrun.disconnect(log_task, dispatch_uid="iris-log-task")


def postrun_receivers() -> int:
    return len(signals.task_postrun.receivers or [])


@pytest.mark.usefixtures("no_task_log")
def test_at_warning_no_per_task_hook_is_added() -> None:
    before = postrun_receivers()
    _use_json(logging.getLogger("iris-test-warning"), loglevel=logging.WARNING)
    assert postrun_receivers() == before


@pytest.mark.usefixtures("no_task_log")
def test_at_info_one_per_task_hook_is_added_once() -> None:
    before = postrun_receivers()
    _use_json(logging.getLogger("iris-test-info"), loglevel="INFO")
    _use_json(logging.getLogger("iris-test-info"), loglevel=logging.INFO)
    assert postrun_receivers() == before + 1


def test_handlers_get_json_lines_with_the_running_tasks_ids() -> None:
    logger = logging.getLogger("iris-test-json")
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    logger.propagate = False
    _use_json(logger, loglevel=logging.WARNING)
    app = Celery(set_as_current=False)

    @app.task(name="t", shared=False)
    def t() -> None:
        pass

    t.push_request(id="task-9", request_id="req-9")
    _task_stack.push(t)
    try:
        logger.warning("inside")
    finally:
        _task_stack.pop()
        t.pop_request()
    logger.warning("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["task_id"], inside["request_id"], inside["message"]) == ("task-9", "req-9", "inside")
    assert "task_id" not in outside and "request_id" not in outside
    assert sum(isinstance(f, TaskContextFilter) for f in logger.handlers[0].filters) == 1
