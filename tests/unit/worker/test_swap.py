"""The live swap: a new version is loaded and warmed aside, then swapped in whole; a bad one is refused."""

import json
import logging
import threading
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import redis
from celery.concurrency.prefork import TaskPool as PreforkPool
from kombu.exceptions import OperationalError
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shared.logs import json_formatter
from shared.schemas import FEATURES, LABELS
from worker.app import _pool_recycler
from worker.model import ModelLoadError, ServedModel, ready_model
from worker.swap import ModelSwapper, Outcome

ROWS = load_iris().data[::15]


def fitted(columns: list[str], labels: tuple[str, ...] = LABELS) -> Pipeline:
    """Fit training's pipeline on Iris with the given feature columns and class names."""
    iris = load_iris()
    frame = pd.DataFrame(iris.data, columns=list(FEATURES))[columns]
    return Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(
        frame, [labels[t] for t in iris.target])


class BrokenProba:
    """A classifier with the contract's labels whose predictions fail: it cannot be warmed."""

    classes_ = list(LABELS)

    def predict_proba(self, matrix: Any) -> Any:
        raise RuntimeError("predict_proba exploded")


GOOD = fitted(list(FEATURES))
ESTIMATORS: dict[str, Any] = {
    "1": GOOD,
    "2": fitted(list(reversed(FEATURES))),
    "3": fitted(list(FEATURES[:3])),  # a feature short of the contract
    "4": fitted(list(FEATURES), labels=("setosa", "versicolor", "virginica")),  # labels not the contract's
    "5": BrokenProba(),
}


class FakeRegistry:
    """The alias and the loads, in memory: ``load`` does what the worker's does after MLflow hands it a model."""

    def __init__(self, alias: str = "1") -> None:
        self.alias = alias
        self.loads: list[str] = []
        self.reachable = True

    def resolve(self) -> str:
        if not self.reachable:
            raise ModelLoadError("cannot load models:/iris-classifier@champion: connection refused")
        return self.alias

    def load(self, version: str) -> ServedModel:
        self.loads.append(version)
        return ready_model(ESTIMATORS[version], "iris-classifier", version, f"run-{version}")


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def swapper(registry: FakeRegistry) -> ModelSwapper:
    swapper = ModelSwapper(registry.resolve, registry.load, clock=lambda: 1000.0)
    swapper.start()
    return swapper


def versions(model: ServedModel) -> set[str]:
    return {row["model_version"] for row in model.predict_rows(ROWS)}


def test_start_serves_the_version_the_alias_names(swapper: ModelSwapper) -> None:
    assert swapper.current is not None and swapper.current.version == "1"
    assert swapper.counters.loads == 1 and swapper.counters.swaps == 0


def test_an_unchanged_alias_loads_nothing(swapper: ModelSwapper, registry: FakeRegistry) -> None:
    assert swapper.check() is Outcome.UNCHANGED
    assert registry.loads == ["1"]
    assert swapper.counters.checks == 1


def test_a_new_version_is_swapped_in_and_counted(swapper: ModelSwapper, registry: FakeRegistry) -> None:
    registry.alias = "2"
    assert swapper.check() is Outcome.SWAPPED
    assert swapper.current is not None and versions(swapper.current) == {"2"}
    assert (swapper.counters.loads, swapper.counters.swaps, swapper.counters.load_failures) == (2, 1, 0)
    info = swapper.info()
    assert info["model_version"] == "2" and info["counters"]["swaps"] == 1
    assert info["last_check"] == {"outcome": "swapped", "alias_version": "2", "error": None, "at": 1000.0}


@pytest.mark.parametrize(("version", "reason"), [
    ("3", "model expects features"),
    ("4", "model predicts labels"),
    ("5", "RuntimeError: predict_proba exploded"),
])
def test_a_version_that_breaks_the_contract_or_cannot_warm_is_refused_and_the_old_one_serves(
    swapper: ModelSwapper, registry: FakeRegistry, version: str, reason: str
) -> None:
    old = swapper.current
    registry.alias = version
    assert swapper.check() is Outcome.REFUSED
    assert swapper.current is old and old is not None and versions(old) == {"1"}
    assert (swapper.counters.loads, swapper.counters.swaps, swapper.counters.load_failures) == (1, 0, 1)
    assert swapper.last_failure is not None and swapper.last_failure["version"] == version
    assert reason in swapper.last_failure["error"]


def test_a_refused_version_is_logged_as_one_json_line(swapper: ModelSwapper, registry: FakeRegistry,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    registry.alias = "3"
    with caplog.at_level(logging.WARNING, logger="worker.swap"):
        swapper.check()
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    line = json_formatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["event"] == "model_refused" and fields["refused_version"] == "3"
    assert fields["model_version"] == "1" and "model expects features" in fields["message"]


def test_polls_do_not_reload_a_refused_version_but_a_forced_check_does(
    swapper: ModelSwapper, registry: FakeRegistry
) -> None:
    registry.alias = "3"
    assert swapper.check() is Outcome.REFUSED
    assert swapper.check() is Outcome.SKIPPED
    assert registry.loads == ["1", "3"] and swapper.counters.load_failures == 1
    assert swapper.check(force=True) is Outcome.REFUSED
    assert registry.loads == ["1", "3", "3"] and swapper.counters.load_failures == 2


def test_an_alias_moved_back_and_again_onto_a_refused_version_is_tried_again(
    swapper: ModelSwapper, registry: FakeRegistry
) -> None:
    registry.alias = "3"
    swapper.check()
    registry.alias = "1"
    assert swapper.check() is Outcome.UNCHANGED
    registry.alias = "3"
    assert swapper.check() is Outcome.REFUSED
    assert swapper.counters.load_failures == 2


def test_an_unreachable_registry_changes_nothing_and_is_logged_once_per_outage(
    swapper: ModelSwapper, registry: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.reachable = False
    with caplog.at_level(logging.WARNING, logger="worker.swap"):
        assert [swapper.check() for _ in range(3)] == [Outcome.UNREACHABLE] * 3
    assert swapper.counters.check_failures == 3 and swapper.counters.load_failures == 0
    assert len(caplog.records) == 1
    assert swapper.current is not None and swapper.current.version == "1"


def test_the_old_version_serves_while_the_new_one_loads_and_the_swap_is_one_assignment(
    swapper: ModelSwapper, registry: FakeRegistry
) -> None:
    loading, release = threading.Event(), threading.Event()

    def slow_load(version: str) -> ServedModel:
        loading.set()
        release.wait(10)
        return registry.load(version)

    swapper._load = slow_load
    registry.alias = "2"
    check = threading.Thread(target=swapper.check)
    check.start()
    assert loading.wait(10)
    during = swapper.current
    assert during is not None and versions(during) == {"1"}  # still the old model, whole, mid-load
    release.set()
    check.join(10)
    # A batch that read the reference before the swap finishes with the old version, every row of it.
    assert versions(during) == {"1"}
    assert swapper.current is not None and versions(swapper.current) == {"2"}


def test_the_swap_hook_gets_the_new_model_after_it_serves(swapper: ModelSwapper, registry: FakeRegistry) -> None:
    seen: list[tuple[str, str]] = []
    swapper.on_swap = lambda model: seen.append((model.version, swapper.current.version if swapper.current else ""))
    registry.alias = "2"
    swapper.check()
    registry.alias = "3"
    swapper.check()
    assert seen == [("2", "2")]


def test_a_swap_hook_that_fails_is_called_again_at_the_next_check(swapper: ModelSwapper,
                                                                  registry: FakeRegistry) -> None:
    calls: list[str] = []

    def hook(model: ServedModel) -> None:
        calls.append(model.version)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    swapper.on_swap = hook
    registry.alias = "2"
    assert swapper.check() is Outcome.SWAPPED
    assert swapper.check() is Outcome.UNCHANGED
    swapper.check()
    assert calls == ["2", "2"]


def test_start_raises_when_the_first_version_cannot_serve(registry: FakeRegistry) -> None:
    registry.alias = "4"
    with pytest.raises(ModelLoadError, match="model predicts labels"):
        ModelSwapper(registry.resolve, registry.load).start()


class Surprise(Exception):
    """A failure of a type the swapper does not expect from the registry."""


@pytest.mark.parametrize("step", ["resolve", "load"])
def test_a_registry_failure_of_an_unexpected_type_leaves_the_served_version_for_the_poller_to_log(
    swapper: ModelSwapper, registry: FakeRegistry, step: str
) -> None:
    def fail(*_: Any) -> Any:
        raise Surprise("a bug")

    registry.alias = "2"
    setattr(swapper, f"_{step}", fail)
    with pytest.raises(Surprise):
        swapper.check()
    assert swapper.current is not None and swapper.current.version == "1"
    assert swapper.counters.load_failures == 0 and swapper.refused is None


@pytest.mark.parametrize("failure", [redis.ConnectionError("Error 111 connecting to redis:6379"),
                                     OperationalError("failed to publish after 3 retries")],
                         ids=lambda exc: type(exc).__name__)
def test_a_prefork_pool_restart_the_broker_refuses_is_sent_again_at_the_next_check(
    swapper: ModelSwapper, registry: FakeRegistry, failure: Exception
) -> None:
    sent: list[list[str]] = []

    def pool_restart(destination: list[str], reply: bool) -> None:
        sent.append(destination)
        if len(sent) == 1:
            raise failure

    consumer = SimpleNamespace(pool=PreforkPool.__new__(PreforkPool), hostname="w@host",
                               app=SimpleNamespace(control=SimpleNamespace(pool_restart=pool_restart)),
                               connection_errors=(redis.ConnectionError,), channel_errors=(redis.ResponseError,))
    swapper.on_swap = _pool_recycler(consumer)
    registry.alias = "2"
    assert swapper.check() is Outcome.SWAPPED
    assert swapper.check() is Outcome.UNCHANGED
    swapper.check()
    assert sent == [["w@host"], ["w@host"]]
