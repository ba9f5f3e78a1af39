"""A table over the row limit fails with a PayloadValidationError naming the limit, before the model sees a row."""

from typing import Any

import pytest

import worker.tasks
from shared import tasks as names
from shared.errors import PayloadValidationError
from shared.settings import get_settings
from tests.unit.worker.test_tasks_read_the_model_once import FLOWER, CapturingApp
from worker.tasks import register_tasks

ROW = list(FLOWER.values())


class NoModel:
    """A model source that fails the test if anything asks it for the model."""

    def __call__(self) -> Any:
        raise AssertionError("the model was used")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> tuple[CapturingApp, list[tuple[Any, str, Any]]]:
    monkeypatch.setenv("BATCH_MAX_ROWS", "5")
    monkeypatch.setenv("BATCH_MAX_SIZE", "8")
    get_settings.cache_clear()
    answered: list[tuple[Any, str, Any]] = []

    def store_many(backend: Any, ids: Any, results: Any, state: str, reply: Any, *rest: Any, **kw: Any) -> None:
        answered.append((results, state, reply))

    monkeypatch.setattr(worker.tasks, "store_many", store_many)
    captured = CapturingApp()
    register_tasks(captured, NoModel())
    return captured, answered


def test_a_batch_over_batch_max_rows_fails_naming_the_limit_without_the_model(
        app: tuple[CapturingApp, list[Any]]) -> None:
    with pytest.raises(PayloadValidationError, match="6 rows: a batch takes at most 5 rows"):
        app[0].functions[names.CLASSIFY_BATCH]([FLOWER] * 6)


def test_an_edge_batch_over_the_internal_limit_answers_a_failure_on_its_reply_channel(
        app: tuple[CapturingApp, list[Any]]) -> None:
    captured, answered = app
    captured.functions[names.CLASSIFY_ROWS]([ROW] * 9, [f"id-{i}" for i in range(9)], "reply:1")
    [(results, state, (channel, reply))] = answered
    assert state == "FAILURE" and channel == "reply:1" and len(results) == 9
    assert b'"raised":"PayloadValidationError"' in reply and b"at most 8 rows" in reply


def test_a_table_over_the_internal_limit_answers_a_failure_on_its_reply_channel(
        app: tuple[CapturingApp, list[Any]]) -> None:
    captured, answered = app
    captured.functions[names.CLASSIFY_TABLE]([ROW] * 9, "table-1", "reply:1")
    [(results, state, (channel, reply))] = answered
    assert state == "FAILURE" and channel == "reply:1" and isinstance(results[0], PayloadValidationError)
    assert b"at most 8 rows" in reply
