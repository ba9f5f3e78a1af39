"""The stall detector: when the worker's watchdog probes, waits, or declares the consumer stalled."""

from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, signals

import worker.watchdog as watchdog_module
from shared.settings import Settings
from worker.watchdog import EXIT_STALLED, ConsumerWatchdog, StallDetector, Verdict, install


def detector(now: float = 0.0) -> StallDetector:
    return StallDetector(interval=5, timeout=10, busy_grace=60, last_seen=now)


def test_a_consumer_that_received_recently_is_alive_and_not_probed() -> None:
    d = detector()
    d.seen(3.0)
    assert d.tick(5.0) is Verdict.ALIVE


def test_an_idle_consumer_is_probed() -> None:
    assert detector().tick(5.0) is Verdict.PROBE


def test_a_received_probe_clears_the_suspicion() -> None:
    d = detector()
    assert d.tick(5.0) is Verdict.PROBE
    d.probe_sent(5.0, 5.0)
    d.seen(5.01)
    assert d.tick(10.0) is Verdict.ALIVE
    assert d.probe_sent_at is None


def test_an_unreceived_probe_means_stalled_only_after_the_timeout() -> None:
    d = detector()
    d.tick(5.0)
    d.probe_sent(5.0, 5.0)
    assert d.tick(10.0) is Verdict.WAITING
    assert d.tick(15.0) is Verdict.WAITING
    assert d.tick(20.0) is Verdict.STALLED


def test_executing_tasks_extend_the_deadline_by_the_time_limit() -> None:
    d = detector()
    d.tick(5.0)
    d.probe_sent(5.0, 5.0)
    for now in range(10, 76, 5):
        assert d.tick(float(now), busy=True) is Verdict.WAITING
    assert d.tick(80.0, busy=True) is Verdict.STALLED


def test_a_broker_that_refused_the_probe_counts_nothing_against_the_worker() -> None:
    d = detector()
    for now in (5.0, 10.0, 15.0, 20.0, 25.0):
        assert d.tick(now) is Verdict.PROBE  # the publish failed each time: no probe is outstanding


def test_a_frozen_process_starts_over_instead_of_blaming_the_consumer() -> None:
    d = detector()
    d.tick(5.0)
    d.probe_sent(5.0, 5.0)
    assert d.tick(10.0) is Verdict.WAITING
    # SIGSTOP for a minute: the outstanding probe is forgotten and a fresh one is sent.
    assert d.tick(70.0) is Verdict.PROBE
    d.probe_sent(70.0, 70.0)
    assert d.tick(75.0) is Verdict.WAITING
    assert d.tick(85.0) is Verdict.STALLED


def test_a_slow_publish_is_not_counted_and_an_early_receipt_still_answers() -> None:
    d = detector()
    d.tick(5.0)
    d.seen(6.0)  # received while the publish that began at 5 s was still waiting for Redis to confirm
    d.probe_sent(5.0, 9.0)
    assert d.tick(7.0 + 2.0) is Verdict.ALIVE
    d.tick(14.0)
    d.probe_sent(14.0, 18.0)  # Redis was slow to accept; the consumer gets the full timeout from 18 s
    for now in (16.0, 20.0, 24.0, 28.0):
        assert d.tick(now) is Verdict.WAITING
    assert d.tick(30.0) is Verdict.STALLED


def test_a_message_the_guard_dropped_counts_as_received(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker fed only malformed messages consumes all the same: the watchdog must not take it for stalled.
    app = Celery("test", broker="memory://", set_as_current=False)
    connected: list[tuple[Any, Any]] = []  # (signal, receiver), recorded instead of connected process-wide
    for signal in (signals.celeryd_after_setup, signals.worker_ready, signals.worker_shutting_down,
                   signals.task_received, signals.task_prerun, signals.task_rejected):
        monkeypatch.setattr(signal, "connect", lambda receiver, s=signal, **_: connected.append((s, receiver)))
    install(app, Settings())
    after_setup = next(receiver for signal, receiver in connected if signal is signals.celeryd_after_setup)
    after_setup(sender="w@host", instance=SimpleNamespace(app=app))
    on_rejected = next(receiver for signal, receiver in connected if signal is signals.task_rejected)
    watchdog = on_rejected.__self__
    watchdog.detector.last_seen = -100.0
    on_rejected(sender=None, message=None, exc=None)
    assert watchdog.detector.last_seen > 0


class Exited(BaseException):
    """Raised by the test's os._exit, which must not end the test run."""


def test_a_stalled_worker_exits_whatever_the_salvage_of_its_unread_tasks_raised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def salvage(transport: Any) -> int:
        raise LookupError("a failure of a type the salvage does not expect")

    def exit_(status: int) -> None:
        raise Exited(status)

    monkeypatch.setattr(watchdog_module.brpop, "salvage_unread_replies", salvage)
    monkeypatch.setattr(watchdog_module, "active_children", list)
    monkeypatch.setattr(watchdog_module.os, "_exit", exit_)
    watchdog = ConsumerWatchdog(Celery("test", broker="memory://", set_as_current=False), "w@host", Settings())
    watchdog.consumer = SimpleNamespace(connection=SimpleNamespace(transport=object()))
    with pytest.raises(Exited) as exited:
        watchdog._exit()
    assert exited.value.args == (EXIT_STALLED,)
    assert "the salvage of unread tasks failed: LookupError" in caplog.text


def test_a_watchdog_queue_expires_once_unused_so_rabbitmq_does_not_keep_one_per_worker_ever_started() -> None:
    watchdog = ConsumerWatchdog(Celery(set_as_current=False), "w1@h", Settings(celery_broker_url="amqp://r//"))
    assert watchdog.queue.name == "iris.watchdog.w1@h"
    assert watchdog.queue.expires == watchdog_module.WATCHDOG_QUEUE_EXPIRES_SECONDS == 300
