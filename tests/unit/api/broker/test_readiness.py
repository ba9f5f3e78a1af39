"""GET /readyz's check: ready with workers and depth, or the 503 that names why."""

import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
from celery import Celery

from api.broker.admission import Admission
from api.broker.circuit import Circuit
from api.broker.readiness import Readiness, WorkerCheck, redact_strings
from api.errors import NoWorkers, QueueUnavailable
from shared import tasks

WORKERS = {"celery@w1": {"model_version": "3", "model_name": "iris-classifier"}}


class FakeResults:
    """The result backend's Redis client: ``ping`` answers, or raises ``error``."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.pings = 0

    def ping(self) -> bool:
        self.pings += 1
        if self.error is not None:
            raise self.error
        return True


class FakeAdmission:
    def __init__(self, depths: dict[str, int]) -> None:
        self.depths_value = depths
        self.fresh: list[bool] = []

    def depths(self, fresh: bool = False) -> dict[str, int]:
        self.fresh.append(fresh)
        return self.depths_value


class FakeWorkers:
    def __init__(self, workers: dict[str, Any]) -> None:
        self.answer = workers
        self.asked = 0

    def workers(self) -> dict[str, Any]:
        self.asked += 1
        return self.answer


@pytest.fixture
def results() -> FakeResults:
    return FakeResults()


@pytest.fixture
def admission() -> FakeAdmission:
    return FakeAdmission({"iris": 4, "iris.rows": 3})


@pytest.fixture
def workers() -> FakeWorkers:
    return FakeWorkers(WORKERS)


@pytest.fixture
def circuit() -> Circuit:
    return Circuit(open_seconds=60)  # stays open for the whole test once tripped


@pytest.fixture
def readiness(results: FakeResults, admission: FakeAdmission, workers: FakeWorkers, circuit: Circuit) -> Readiness:
    return Readiness(cast(redis.Redis, results), cast(Admission, admission), cast(WorkerCheck, workers), circuit)


def test_ready_names_the_workers_and_a_fresh_depth_of_both_queues(readiness: Readiness,
                                                                    admission: FakeAdmission) -> None:
    assert readiness.check() == {"status": "ready", "workers": WORKERS, "queue_depth": 7,
                                 "queue_depths": {"iris": 4, "iris.rows": 3},
                                 "models": {"champion": ["3"], "challenger": []}}
    assert admission.fresh == [True]  # readiness never answers from a cached depth


def test_ready_lists_the_champion_and_challenger_versions_across_the_workers(
        results: FakeResults, admission: FakeAdmission, circuit: Circuit) -> None:
    shadowing = {"model_version": "3", "model_name": "iris-classifier",
                 "challenger": {"model_version": "4", "model_name": "iris-classifier", "counters": {}}}
    workers = FakeWorkers({"celery@w1": shadowing, "celery@w2": {**shadowing, "model_version": "2"},
                           "celery@w3": {"model_version": "3", "model_name": "iris-classifier",
                                         "challenger": {"counters": {}, "last_failure": {"version": "5"}}}})
    readiness = Readiness(cast(redis.Redis, results), cast(Admission, admission), cast(WorkerCheck, workers),
                          circuit)
    assert readiness.check()["models"] == {"champion": ["2", "3"], "challenger": ["4"]}


def test_a_failed_ping_is_queue_unavailable_and_trips_the_circuit(readiness: Readiness, results: FakeResults,
                                                                   workers: FakeWorkers, circuit: Circuit) -> None:
    results.error = redis.ConnectionError("Connection refused")
    with pytest.raises(QueueUnavailable):
        readiness.check()
    assert circuit.is_open() and workers.asked == 0


def test_no_worker_with_a_model_is_no_workers(readiness: Readiness, workers: FakeWorkers,
                                              circuit: Circuit) -> None:
    workers.answer = {}
    with pytest.raises(NoWorkers) as caught:
        readiness.check()
    assert caught.value.status == 503 and not circuit.is_open()  # Redis answered: nothing to fail fast on


def test_an_open_circuit_is_queue_unavailable_without_touching_redis(readiness: Readiness, results: FakeResults,
                                                                     admission: FakeAdmission,
                                                                     circuit: Circuit) -> None:
    circuit.trip()
    with pytest.raises(QueueUnavailable):
        readiness.check()
    assert results.pings == 0 and admission.fresh == []


def test_the_worker_check_keeps_only_workers_with_a_loaded_model() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def broadcast(command: str, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((command, kwargs))
        return [{"celery@w1": WORKERS["celery@w1"]}, {"celery@w2": {"model_version": None}},
                {"celery@w3": "loading"}]

    check = WorkerCheck(cast(Celery, SimpleNamespace(control=SimpleNamespace(broadcast=broadcast))), Circuit(1.0))
    assert check.workers() == WORKERS
    assert calls[0][0] == tasks.MODEL_INFO_COMMAND and calls[0][1]["reply"] is True


def test_the_worker_check_waits_for_every_worker_not_the_first_reply() -> None:
    calls: list[dict[str, Any]] = []

    def broadcast(command: str, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append(kwargs)
        return [{"celery@w1": WORKERS["celery@w1"]}]

    WorkerCheck(cast(Celery, SimpleNamespace(control=SimpleNamespace(broadcast=broadcast))), Circuit(1.0)).workers()
    assert "limit" not in calls[0]


def test_a_recent_reading_answers_at_once_while_a_fresh_check_replaces_it() -> None:
    replies = [[{"celery@w1": {"model_version": "2"}}]]
    check = WorkerCheck(cast(Celery, SimpleNamespace(control=SimpleNamespace(
        broadcast=lambda command, **kwargs: replies[0]))), Circuit(1.0), max_age=2.0)
    old = {"celery@w1": {"model_version": "1"}}
    check._last = (time.monotonic() - 3.0, old)  # past max_age, within the stale window
    assert check.workers() == old
    assert check._running is not None
    check._running.result(timeout=5)
    assert check.workers() == {"celery@w1": {"model_version": "2"}}


def test_an_old_reading_waits_for_a_fresh_check() -> None:
    check = WorkerCheck(cast(Celery, SimpleNamespace(control=SimpleNamespace(
        broadcast=lambda command, **kwargs: []))), Circuit(1.0), max_age=2.0)
    check._last = (time.monotonic() - 10.0, {"celery@w1": {"model_version": "1"}})
    assert check.workers() == {}


def test_the_worker_check_redacts_every_password_a_worker_reply_holds() -> None:
    secret = "s3cr3t-pw"
    failure = f"cannot load models:/iris/7 from postgresql://mlflow:{secret}@db:5432/mlflow: timed out"
    info = {"model_name": "iris-classifier", "model_version": "3", "model_run_id": "r1",
            "last_failure": {"version": "7", "error": failure, "at": 12.5},
            "last_check": {"outcome": "unreachable", "error": failure, "history": [failure, 1, None]},
            f"redis://:{secret}@cache:6379/0": True}
    check = WorkerCheck(cast(Celery, SimpleNamespace(control=SimpleNamespace(
        broadcast=lambda command, **kwargs: [{"celery@w1": info}]))), Circuit(1.0))
    workers = check.workers()
    assert secret not in repr(workers)
    served = workers["celery@w1"]
    assert served["last_failure"] == {"version": "7", "at": 12.5, "error": failure.replace(secret, "***")}
    assert served["last_check"]["history"] == [failure.replace(secret, "***"), 1, None]
    assert served["model_version"] == "3" and served["redis://:***@cache:6379/0"] is True


def test_redacting_a_reply_drops_what_nests_deeper_than_a_model_info_can() -> None:
    deep: Any = "redis://:pw@h/0"
    for _ in range(100):
        deep = [deep]
    assert "pw" not in repr(redact_strings({"a": deep}))
    assert redact_strings({"a": {"b": [1, "x"]}}) == {"a": {"b": [1, "x"]}}
