"""Each task reads the served model once, so a swap between two rows cannot answer a message with two versions."""

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

import worker.tasks
from shared import tasks as names
from tests.unit.worker.test_swap import ESTIMATORS
from worker.model import ServedModel, ready_model
from worker.tasks import register_tasks

FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class CapturingApp(Celery):
    """Keep each task's function by name instead of registering it: importing worker registered the iris
    tasks as shared ones already, and a shared name keeps its first callable. Each function gets the empty
    ``request`` a Celery task called directly has, which the tasks read their message's headers from."""

    def __init__(self) -> None:
        super().__init__("test", set_as_current=False)
        self.functions: dict[str, Callable[..., Any]] = {}

    def task(self, *args: Any, **opts: Any) -> Any:
        def capture(fun: Callable[..., Any]) -> Callable[..., Any]:
            fun.request = SimpleNamespace()  # type: ignore[attr-defined]
            self.functions[opts["name"]] = fun
            return fun

        return capture


class SwappingSource:
    """Return version 1 on the first read and version 2 on every later one, as if a swap followed the first."""

    def __init__(self) -> None:
        self.reads = 0
        self.models = [ready_model(ESTIMATORS[v], "iris-classifier", v, f"run-{v}") for v in ("1", "2")]

    def __call__(self) -> ServedModel:
        self.reads += 1
        return self.models[min(self.reads - 1, 1)]


World = tuple[CapturingApp, SwappingSource, list[Any]]


@pytest.fixture
def app_and_source(monkeypatch: pytest.MonkeyPatch) -> World:
    stored: list[Any] = []
    monkeypatch.setattr(worker.tasks, "store_many", lambda backend, ids, results, *rest, **kw: stored.append(results))
    app = CapturingApp()
    source = SwappingSource()
    register_tasks(app, source)
    return app, source, stored


def test_a_batch_task_is_answered_by_one_version(app_and_source: World) -> None:
    app, source, _ = app_and_source
    answers = app.functions[names.CLASSIFY_BATCH]([FLOWER] * 50)
    assert source.reads == 1
    assert {row["model_version"] for row in answers} == {"1"}


def test_an_edge_batch_is_answered_by_one_version(app_and_source: World) -> None:
    app, source, stored = app_and_source
    rows = [list(FLOWER.values())] * 40
    app.functions[names.CLASSIFY_ROWS](rows, [f"id-{i}" for i in range(40)])
    assert source.reads == 1
    [results] = stored
    assert len(results) == 40 and {row["model_version"] for row in results} == {"1"}
