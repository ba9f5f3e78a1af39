"""An internal task answers any failure under each of its ids at once: its callers never wait out a timeout."""

from typing import Any

import orjson
import pytest

import worker.tasks
from shared import tasks as names
from tests.unit.worker.test_tasks_read_the_model_once import FLOWER, CapturingApp
from worker.model import ModelLoadError
from worker.tasks import register_tasks

ROW = list(FLOWER.values())


class Surprise(Exception):
    """A failure of a type nothing names: a bug."""


class FailingModel:
    """A served model whose predictions raise ``failure``."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def predict_rows(self, rows: Any) -> Any:
        raise self.failure


Answers = list[tuple[list[str], list[Any], str, Any]]


def tasks_with(model: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[CapturingApp, Answers]:
    """Register the tasks on a capturing app, ``model`` returning the served model; keep what they store."""
    answered: Answers = []

    def store_many(backend: Any, ids: list[str], results: list[Any], state: str, reply: Any, *_: Any,
                   **__: Any) -> None:
        answered.append((ids, results, state, reply))

    monkeypatch.setattr(worker.tasks, "store_many", store_many)
    app = CapturingApp()
    register_tasks(app, model)
    return app, answered


def no_model() -> Any:
    raise ModelLoadError("the model is not loaded in this process")


@pytest.mark.parametrize("failure", [TypeError("unsupported operand"), ValueError("could not convert"),
                                     IndexError("index 4 is out of bounds"), FloatingPointError("overflow")],
                         ids=lambda exc: type(exc).__name__)
def test_a_model_failure_ends_as_each_rows_error_and_on_the_reply_channel(
        failure: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    app, answered = tasks_with(lambda: FailingModel(failure), monkeypatch)
    app.functions[names.CLASSIFY_ROWS]([ROW, ROW], ["a", "b"], "reply:1")
    [(ids, results, state, (channel, reply))] = answered
    assert (ids, results, state, channel) == (["a", "b"], [failure, failure], "FAILURE", "reply:1")
    assert orjson.loads(reply)["error"] == {"raised": type(failure).__name__, "message": str(failure)}


def test_a_table_whose_model_fails_ends_as_its_tasks_error(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = TypeError("unsupported operand")
    app, answered = tasks_with(lambda: FailingModel(failure), monkeypatch)
    app.functions[names.CLASSIFY_TABLE]([ROW], "table-1", "reply:1")
    [(ids, results, state, _)] = answered
    assert (ids, results, state) == (["table-1"], [failure], "FAILURE")


@pytest.mark.parametrize("task", [names.CLASSIFY_ROWS, names.CLASSIFY_TABLE])
def test_a_process_with_no_model_answers_the_load_error(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app, answered = tasks_with(no_model, monkeypatch)
    app.functions[task]([ROW], ["a"] if task == names.CLASSIFY_ROWS else "a", "reply:1")
    [(_, [result], state, _)] = answered
    assert state == "FAILURE" and isinstance(result, ModelLoadError)


@pytest.mark.parametrize("task", [names.CLASSIFY_ROWS, names.CLASSIFY_TABLE])
def test_a_failure_of_an_unexpected_type_is_answered_too(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    failure = Surprise("a bug")
    app, answered = tasks_with(lambda: FailingModel(failure), monkeypatch)
    app.functions[task]([ROW], ["a"] if task == names.CLASSIFY_ROWS else "a", "reply:1")
    [(_, [result], state, (_, reply))] = answered
    assert state == "FAILURE" and result is failure
    assert orjson.loads(reply)["error"] == {"raised": "Surprise", "message": "a bug"}
