"""Shadowing: a sampled share of answered messages is predicted by the challenger afterwards, in a bounded queue,
and the rows on which both agree are counted, in memory and per (champion, challenger) pair for Redis."""

import logging
import random
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

import worker.tasks
from shared import tasks as names
from shared.settings import Settings
from tests.unit.worker.test_swap import ESTIMATORS, GOOD, FakeRegistry, fitted
from tests.unit.worker.test_tasks_read_the_model_once import FLOWER, CapturingApp
from worker.metrics import ShadowCollector, SwapCollector
from worker.model import ServedModel, ready_model
from worker.shadow import (
    AgreementStore,
    Recording,
    Shadow,
    ShadowItem,
    ShadowQueue,
    agreements,
    sampled,
)
from worker.swap import ModelSwapper, Outcome
from worker.tasks import register_tasks

SETOSA, VIRGINICA = list(FLOWER.values()), [7.7, 2.6, 6.9, 2.3]
CHAMPION = ready_model(GOOD, "iris-classifier", "1", "run-1")
# Trained on the same features in another order: the same answers, from another version.
TWIN = ready_model(ESTIMATORS["2"], "iris-classifier", "2", "run-2")
# Trained with the labels rotated (setosa called versicolor, ...): meets the contract, disagrees on every row.
ROTATED = ready_model(fitted(["sepal_length", "sepal_width", "petal_length", "petal_width"],
                             labels=("Iris-versicolor", "Iris-virginica", "Iris-setosa")), "iris-classifier", "3", "r3")


class FakeStore:
    """What the Redis hashes would receive; ``down`` makes every add raise as Redis would."""

    def __init__(self) -> None:
        self.added: list[tuple[str, str, int, int]] = []
        self.down = False

    def add(self, champion: str, challenger: str, rows: int, agreed: int) -> None:
        if self.down:
            raise redis.ConnectionError("Connection refused")
        self.added.append((champion, challenger, rows, agreed))


def make_shadow(challenger: ServedModel | None, sample: float = 1.0, max_rows: int = 100,
                store: Any = None, draw: Any = random.random) -> Shadow:
    return Shadow(lambda: CHAMPION, lambda: challenger, sample, ShadowQueue(max_rows), store, draw=draw,
                  clock=lambda: 0.0)


def item(rows: int, challenger: ServedModel = TWIN) -> ShadowItem:
    batch = [SETOSA] * rows
    return ShadowItem(batch, CHAMPION.predict_rows(batch), CHAMPION.version, challenger)


def test_sampling_shadows_about_the_set_share_of_messages_and_all_or_none_at_the_ends() -> None:
    draw = random.Random(7).random
    share = sum(sampled(0.25, draw) for _ in range(20_000)) / 20_000
    assert 0.24 < share < 0.26
    assert all(sampled(1.0, draw) for _ in range(1000))
    assert not any(sampled(0.0, draw) for _ in range(1000))


def test_without_a_challenger_or_unsampled_the_tasks_get_the_champion_itself() -> None:
    assert make_shadow(None).served() is CHAMPION
    assert make_shadow(TWIN, sample=0.5, draw=lambda: 0.7).served() is CHAMPION
    assert make_shadow(CHAMPION).served() is CHAMPION  # the challenger alias on the champion's version: nothing to do
    assert isinstance(make_shadow(TWIN, sample=0.5, draw=lambda: 0.2).served(), Recording)


def test_a_sampled_message_answers_as_the_champion_and_is_queued_only_after_the_task(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stored: list[Any] = []
    monkeypatch.setattr(worker.tasks, "store_many", lambda backend, ids, results, *rest, **kw: stored.append(results))
    shadow = make_shadow(ROTATED)
    monkeypatch.setattr(shadow, "start", lambda: None)  # no thread: the test shadows the queued message itself
    app = CapturingApp()
    register_tasks(app, shadow.served)
    app.functions[names.CLASSIFY_ROWS]([SETOSA, VIRGINICA], ["a", "b"])
    assert stored == [CHAMPION.predict_rows([SETOSA, VIRGINICA])]  # the champion's answers, not the challenger's
    assert shadow.queue.rows == 0  # nothing is shadowed before the task has returned
    shadow.after_task()
    assert shadow.queue.rows == 2
    queued = shadow.queue.take(0)
    assert queued is not None and queued.champion == "1" and queued.challenger is ROTATED
    assert queued.answers == stored[0]
    shadow.after_task()  # a second signal for the same task finds nothing left
    assert shadow.queue.rows == 0


def test_agreement_is_counted_per_row_by_label() -> None:
    answers = CHAMPION.predict_rows([SETOSA, VIRGINICA, SETOSA])
    assert agreements(answers, TWIN.predict_rows([SETOSA, VIRGINICA, SETOSA])) == 3
    assert agreements(answers, ROTATED.predict_rows([SETOSA, VIRGINICA, SETOSA])) == 0
    first_only = [{"pred_label": answers[0]["pred_label"]}, {"pred_label": "x"}, {"pred_label": "y"}]
    assert agreements(answers, first_only) == 1


def test_the_shadow_counts_agreements_and_disagreements_and_flushes_them_per_pair() -> None:
    store = FakeStore()
    shadow = make_shadow(TWIN, store=store)
    shadow.shadow(item(3, TWIN))
    shadow.shadow(item(2, ROTATED))
    shadow.shadow(item(1, TWIN))
    assert (shadow.counts.agreed, shadow.counts.disagreed) == (4, 2)
    shadow.flush()
    assert sorted(store.added) == [("1", "2", 4, 4), ("1", "3", 2, 0)]
    shadow.flush()  # flushed counts are not added twice
    assert len(store.added) == 2
    registry = CollectorRegistry()
    registry.register(ShadowCollector(shadow))
    assert registry.get_sample_value("iris_shadow_predictions_total", {"agree": "true"}) == 4
    assert registry.get_sample_value("iris_shadow_predictions_total", {"agree": "false"}) == 2


def test_counts_redis_refuses_are_kept_and_added_by_a_later_flush(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.down = True
    shadow = make_shadow(TWIN, store=store)
    shadow.shadow(item(2))
    with caplog.at_level(logging.WARNING, logger="worker.shadow"):
        shadow.flush()
        shadow.shadow(item(1))
        shadow.flush()
    assert len([r for r in caplog.records if getattr(r, "event", None) == "shadow_flush_failed"]) == 1
    store.down = False
    shadow.flush()
    assert store.added == [("1", "2", 3, 3)]


def test_the_queue_drops_and_counts_what_would_pass_its_bound_and_takes_again_once_drained() -> None:
    queue = ShadowQueue(max_rows=5)
    assert queue.offer(item(3)) and queue.offer(item(2))
    assert queue.rows == 5
    assert not queue.offer(item(1))  # the bound is reached: nothing more waits
    assert not queue.offer(item(6))
    assert (queue.rows, queue.dropped) == (5, 7)
    first = queue.take(0)
    assert first is not None and len(first.answers) == 3 and queue.rows == 2
    assert queue.offer(item(3))
    assert queue.take(0) is not None and queue.take(0) is not None and queue.take(0.01) is None
    assert queue.rows == 0


def test_a_full_queue_leaves_the_answer_alone_and_shows_in_the_drop_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    shadow = make_shadow(TWIN, max_rows=2)
    monkeypatch.setattr(shadow, "start", lambda: None)
    for rows in ([SETOSA, SETOSA], [VIRGINICA]):
        assert shadow.served().predict_rows(rows) == CHAMPION.predict_rows(rows)
        shadow.after_task()
    assert (shadow.queue.rows, shadow.queue.dropped) == (2, 1)
    registry = CollectorRegistry()
    registry.register(ShadowCollector(shadow))
    assert registry.get_sample_value("iris_shadow_dropped_rows_total") == 1
    assert shadow.info()["dropped"] == 1 and shadow.info()["queued_rows"] == 2


def test_a_challenger_that_raises_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(ServedModel):
        def predict_rows(self, rows: Any) -> list[dict[str, Any]]:
            raise ValueError("X has 4 features, but this model expects 5")

    failing = Failing(estimator=GOOD, name="iris-classifier", version="9", run_id="r9")
    shadow = make_shadow(failing)
    with caplog.at_level(logging.ERROR, logger="worker.shadow"):
        shadow.shadow(item(2, failing))
        shadow.shadow(item(3, failing))
    assert (shadow.counts.failed, shadow.counts.agreed, shadow.counts.disagreed) == (5, 0, 0)
    assert [getattr(r, "event", None) for r in caplog.records] == ["challenger_failed"]


def test_the_thread_shadows_queued_messages_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    shadow = make_shadow(TWIN, store=store)
    shadow.queue.offer(item(2))
    monkeypatch.setattr("worker.shadow.FLUSH_SECONDS", 0.0)

    def stop_after_flush() -> None:
        Shadow.flush(shadow)
        shadow.stop()

    monkeypatch.setattr(shadow, "flush", stop_after_flush)
    shadow.run()
    assert store.added == [("1", "2", 2, 2)]


def test_the_store_adds_with_a_script_to_the_pairs_key_and_renews_its_ttl() -> None:
    calls: list[dict[str, Any]] = []

    class Client:
        def register_script(self, script: str) -> Any:
            assert "HINCRBY" not in script  # the ACL allows HGET, HSET and EXPIRE only
            return lambda keys, args: calls.append({"keys": keys, "args": args})

    settings = Settings(key_prefix="p:", shadow_stats_ttl_seconds=600)
    AgreementStore(Client, settings).add("1", "2", 5, 4)
    assert calls == [{"keys": ["p:shadow:iris-classifier:1:2"], "args": [5, 4, 600]}]


def test_a_challenger_swapper_follows_its_alias_appearing_changing_refused_and_removed(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = FakeRegistry()
    alias: list[str | None] = [None]
    swapper = ModelSwapper(lambda: alias[0], registry.load, role="challenger")
    assert swapper.check() is Outcome.UNCHANGED and swapper.current is None
    with caplog.at_level(logging.WARNING, logger="worker.swap"):
        alias[0] = "2"
        assert swapper.check() is Outcome.SWAPPED and swapper.current is not None and swapper.current.version == "2"
        alias[0] = "3"  # a feature short of the contract
        assert swapper.check() is Outcome.REFUSED and swapper.current.version == "2"
        alias[0] = None
        assert swapper.check() is Outcome.REMOVED and swapper.current is None
    assert [getattr(r, "event", None) for r in caplog.records] == ["challenger_swapped", "challenger_refused",
                                                                   "challenger_removed"]
    assert "challenger version 3 refused" in caplog.records[1].getMessage()
    assert swapper.counters.load_failures == 1


def test_the_scrape_shows_both_models_by_role_and_the_challengers_refusals() -> None:
    champion = ModelSwapper(lambda: "1", FakeRegistry().load)
    champion.start()
    alias = ["2"]
    challenger = ModelSwapper(lambda: alias[0], FakeRegistry().load, role="challenger")
    challenger.check()
    registry = CollectorRegistry()
    registry.register(SwapCollector(lambda: champion, lambda: challenger))
    info = {"name": "iris-classifier"}
    assert registry.get_sample_value("iris_model_info", {**info, "version": "1", "role": "champion"}) == 1
    assert registry.get_sample_value("iris_model_info", {**info, "version": "2", "role": "challenger"}) == 1
    alias[0] = "4"  # labels not the contract's
    challenger.check()
    assert registry.get_sample_value("iris_challenger_load_failures_total") == 1
    assert registry.get_sample_value("iris_model_loads_total") == 1  # the champion's figures stay its own
