"""The worker's figures: task durations, predictions by label, and the model's loads and swaps read when scraped."""

from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import worker.tasks
from shared import tasks as names
from shared.settings import Settings
from tests.unit.worker.test_swap import ESTIMATORS
from tests.unit.worker.test_tasks_read_the_model_once import FLOWER, CapturingApp
from worker.message_guard import REASONS
from worker.metrics import SwapCollector, TaskMetrics, WorkerMetrics
from worker.model import ModelLoadError, ready_model
from worker.swap import ModelSwapper
from worker.tasks import register_tasks


def test_predictions_are_counted_by_label_and_each_task_run_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.tasks, "store_many", lambda *args, **kwargs: None)
    registry = CollectorRegistry()
    app = CapturingApp()
    model = ready_model(ESTIMATORS["1"], "iris-classifier", "1", "run-1")
    register_tasks(app, lambda: model, TaskMetrics(registry))
    setosa, virginica = list(FLOWER.values()), [7.7, 2.6, 6.9, 2.3]
    app.functions[names.CLASSIFY_ROWS]([setosa, setosa, virginica], ["a", "b", "c"])
    app.functions[names.CLASSIFY_BATCH]([FLOWER])
    app.functions[names.CLASSIFY](FLOWER)
    small, large = (model.predict_rows([row])[0]["pred_label"] for row in (setosa, virginica))
    assert small != large
    assert registry.get_sample_value("iris_predictions_total", {"label": small}) == 4
    assert registry.get_sample_value("iris_predictions_total", {"label": large}) == 1
    for task in (names.CLASSIFY_ROWS, names.CLASSIFY_BATCH, names.CLASSIFY):
        assert registry.get_sample_value("iris_task_duration_seconds_count", {"task": task}) == 1
        assert registry.get_sample_value("iris_task_duration_seconds_sum", {"task": task}) > 0


def test_a_failed_task_is_timed_and_predicts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.tasks, "store_many", lambda *args, **kwargs: None)
    registry = CollectorRegistry()
    app = CapturingApp()

    def no_model() -> Any:
        raise ModelLoadError("the model is not loaded in this process")

    register_tasks(app, no_model, TaskMetrics(registry))
    app.functions[names.CLASSIFY_ROWS]([list(FLOWER.values())], ["a"])
    assert registry.get_sample_value("iris_task_duration_seconds_count", {"task": names.CLASSIFY_ROWS}) == 1
    assert not [s for m in registry.collect() if m.name == "iris_predictions" for s in m.samples]


def test_the_scrape_reads_the_swappers_counters_and_the_served_version() -> None:
    models = {v: ready_model(ESTIMATORS[v], "iris-classifier", v, f"run-{v}") for v in ("1", "2")}
    alias = ["1"]

    def load(version: str) -> Any:
        if version == "3":
            raise ModelLoadError("version 3 does not meet the contract")
        return models[version]

    swapper = ModelSwapper(lambda: alias[0], load)
    registry = CollectorRegistry()
    registry.register(SwapCollector(lambda: swapper))
    assert registry.get_sample_value("iris_model_loads_total") == 0
    swapper.start()
    alias[0] = "2"
    swapper.check()
    alias[0] = "3"
    swapper.check()
    assert registry.get_sample_value("iris_model_loads_total") == 2
    assert registry.get_sample_value("iris_model_swaps_total") == 1
    assert registry.get_sample_value("iris_model_load_failures_total") == 1
    champion = {"name": "iris-classifier", "role": "champion"}
    assert registry.get_sample_value("iris_model_info", {**champion, "version": "2"}) == 1
    assert registry.get_sample_value("iris_model_info", {**champion, "version": "1"}) is None
    assert registry.get_sample_value("iris_challenger_load_failures_total") is None  # no shadowing, no such figure


def test_nothing_is_reported_before_the_model_loads() -> None:
    assert list(SwapCollector(lambda: None).collect()) == []


def test_port_zero_serves_nothing() -> None:
    metrics = WorkerMetrics(Settings(worker_metrics_port=0), lambda: None)
    metrics.serve()
    assert metrics._server is None


def test_rejected_messages_are_read_from_the_tally_by_reason_when_scraped() -> None:
    tally: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
    metrics = WorkerMetrics(Settings(worker_metrics_port=0), lambda: None, tally)
    assert metrics.registry.get_sample_value("iris_rejected_messages_total", {"reason": "not_json"}) == 0
    tally["not_json"] += 2
    tally["bad_rows"] += 1
    assert metrics.registry.get_sample_value("iris_rejected_messages_total", {"reason": "not_json"}) == 2
    assert metrics.registry.get_sample_value("iris_rejected_messages_total", {"reason": "bad_rows"}) == 1
    assert {s.labels["reason"] for m in metrics.registry.collect() if m.name == "iris_rejected_messages"
            for s in m.samples if s.name.endswith("_total")} == set(REASONS)
