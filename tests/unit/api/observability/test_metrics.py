"""GET /metrics: every answer counted by Flask endpoint and status, batch sizes, and the state read at scrape time."""

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api.broker.circuit import Circuit
from api.errors import QueueUnavailable
from api.observability import metrics, multiprocess_dir
from shared.settings import Settings

DOWN = "redis://127.0.0.1:1/0"
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus' text format into {(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def app_with(**settings: Any) -> Flask:
    return create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, **settings))


@pytest.fixture
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without PROMETHEUS_MULTIPROC_DIR, as the test client does."""
    monkeypatch.delenv(multiprocess_dir.ENV, raising=False)


@pytest.mark.usefixtures("single_process")
def test_requests_are_counted_by_flask_endpoint_and_status_errors_included() -> None:
    client = app_with().test_client()
    for _ in range(3):
        assert client.get("/livez").status_code == 200
    assert client.post("/v1/classify", json={**FLOWER, "sepal_length": "x"}).status_code == 400
    assert client.get("/no/such/path/123").status_code == 404
    assert client.get("/v1/classify").status_code == 405
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain")
    got = samples(resp.get_data(as_text=True))
    assert got[("iris_requests_total", (("endpoint", "health.livez"), ("status", "200")))] == 3
    assert got[("iris_requests_total", (("endpoint", "classify.classify"), ("status", "400")))] == 1
    # No route matched: one label for every such path, so a scanner cannot grow the series.
    assert got[("iris_requests_total", (("endpoint", "unmatched"), ("status", "404")))] == 1
    assert got[("iris_requests_total", (("endpoint", "unmatched"), ("status", "405")))] == 1
    assert got[("iris_request_duration_seconds_count", (("endpoint", "health.livez"),))] == 3
    assert got[("iris_request_duration_seconds_bucket", (("endpoint", "health.livez"), ("le", "+Inf")))] == 3
    assert not any("/no/such" in str(labels) for _, labels in got)


@pytest.mark.usefixtures("single_process")
def test_skipped_reply_channel_messages_are_counted_from_zero() -> None:
    app = app_with()
    count = metrics.count_rejected_replies(app, app.extensions["iris"].settings)
    assert count is not None
    assert samples(app.test_client().get("/metrics").get_data(as_text=True))[("iris_rejected_replies_total", ())] == 0
    count()
    count()
    assert samples(app.test_client().get("/metrics").get_data(as_text=True))[("iris_rejected_replies_total", ())] == 2
    assert metrics.count_rejected_replies(app_with(metrics=False), Settings(metrics=False)) is None


@pytest.mark.usefixtures("single_process")
def test_each_app_counts_its_own_requests() -> None:
    first, second = app_with().test_client(), app_with().test_client()
    first.get("/livez")
    got = samples(second.get("/metrics").get_data(as_text=True))
    assert ("iris_requests_total", (("endpoint", "health.livez"), ("status", "200"))) not in got


@pytest.mark.usefixtures("single_process")
def test_metrics_off_serves_no_metrics_route_and_leaves_the_publisher_alone() -> None:
    app = app_with(metrics=False)
    assert app.test_client().get("/metrics").status_code == 404
    assert metrics.KEY not in app.extensions

    def publish(rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        """Publish nothing."""

    assert metrics.observe_batches(app, Settings(metrics=False), publish) is publish


@pytest.mark.usefixtures("single_process")
def test_each_published_batch_is_observed_by_its_rows_and_a_failed_one_is_not() -> None:
    app = Flask(__name__)
    fail = [False]

    def publish(rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        if fail[0]:
            raise ConnectionError("Redis is down")

    observed = metrics.observe_batches(app, Settings(), publish)
    observed([[1.0] * 4] * 3, ["a", "b", "c"], [None] * 3)
    observed([[1.0] * 4], ["d"], [None])
    fail[0] = True
    with pytest.raises(ConnectionError):
        observed([[1.0] * 4] * 5, list("efghi"), [None] * 5)
    recorded: metrics.ApiMetrics = app.extensions[metrics.KEY]
    assert recorded.registry.get_sample_value("iris_batch_size_count") in (None, 0)  # queued, not yet written
    recorded.flush()  # what the flusher thread does each second, and a scrape before it reads
    registry = recorded.registry
    assert registry.get_sample_value("iris_batch_size_count") == 2
    assert registry.get_sample_value("iris_batch_size_sum") == 4
    assert registry.get_sample_value("iris_batch_size_bucket", {"le": "4.0"}) == 2


class FakeWorkers:
    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer

    def workers(self) -> dict[str, Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def fake_services(depths: dict[str, int] | int | Exception, workers: dict[str, Any] | Exception,
                  circuit_open: bool = False) -> Any:
    """Services whose admission reads ``depths`` ({queue: depth}; a bare number is the iris queue's)."""
    def read_depths() -> dict[str, int]:
        if isinstance(depths, Exception):
            raise depths
        return {"iris": depths} if isinstance(depths, int) else depths

    circuit = Circuit(open_seconds=60)
    if circuit_open:
        circuit.trip()
    return SimpleNamespace(circuit=circuit,
                           admission=SimpleNamespace(depths=read_depths),
                           readiness=SimpleNamespace(workers=FakeWorkers(workers)))


def collect(services: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.StateCollector(services).collect() for s in family.samples}


def test_the_scrape_reads_the_depth_of_both_queues_and_one_series_per_served_model_version_and_role() -> None:
    model = {"model_name": "iris-classifier", "model_version": "1"}
    shadowing = {**model, "challenger": {"model_name": "iris-classifier", "model_version": "3"}}
    got = collect(fake_services({"iris": 7, "iris.rows": 2}, {
        "w1@a": model, "w2@b": shadowing, "w3@c": {"model_name": "iris-classifier", "model_version": "2",
                                                   "challenger": {"counters": {}}}}))  # no challenger loaded
    assert got == {("iris_queue_depth", ()): 9,  # together, as QUEUE_MAX_LENGTH bounds them
                   ("iris_queue_messages", (("queue", "iris"),)): 7,
                   ("iris_queue_messages", (("queue", "iris.rows"),)): 2,
                   ("iris_model_info", (("name", "iris-classifier"), ("role", "champion"), ("version", "1"))): 1,
                   ("iris_model_info", (("name", "iris-classifier"), ("role", "champion"), ("version", "2"))): 1,
                   ("iris_model_info", (("name", "iris-classifier"), ("role", "challenger"), ("version", "3"))): 1}


def test_the_scrape_leaves_out_what_redis_cannot_answer_rather_than_report_zero() -> None:
    assert collect(fake_services(ConnectionError("down"), QueueUnavailable())) == {}
    # While the circuit is open the depth is not even asked for.
    assert collect(fake_services({"iris": 3}, {}, circuit_open=True)) == {}


def test_prepare_makes_a_fresh_directory_when_none_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(multiprocess_dir.ENV, "")  # empty counts as unset; the teardown removes what prepare sets
    path = multiprocess_dir.prepare(Settings())
    try:
        assert path is not None and os.environ[multiprocess_dir.ENV] == path
        assert os.path.isdir(path) and os.listdir(path) == []
    finally:
        os.rmdir(str(path))


def test_prepare_wipes_the_files_of_an_earlier_run_from_a_given_directory(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(multiprocess_dir.ENV, str(tmp_path))
    assert multiprocess_dir.prepare(Settings()) == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_prepare_does_nothing_when_metrics_are_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multiprocess_dir.ENV, raising=False)
    assert multiprocess_dir.prepare(Settings(metrics=False)) is None
    assert multiprocess_dir.ENV not in os.environ
