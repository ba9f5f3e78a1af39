"""Exit the worker when its consumer stops taking messages, so that its supervisor replaces it.

A worker whose broker connection broke in some ways never consumes again and logs nothing: paused through a
Redis restart, it blocks forever in a pub/sub read (celery/celery#10205, #9054, #8030; reproduced here with
kombu 5.7 and redis-py 8.1, docs/reliability.md). No transport option reaches that read, so this watchdog
checks the one thing that matters, end to end: a probe task published to this worker's own queue must be
received. A thread in the main process publishes one when the worker has received nothing for
``WORKER_WATCHDOG_INTERVAL_SECONDS``. If Redis accepted the probe and the consumer has not received it
``WORKER_WATCHDOG_TIMEOUT_SECONDS`` later, the worker exits non-zero: make up's supervisor or the container's
restart policy starts a fresh one, and the messages the stalled worker had reserved come back after the
visibility timeout. While Redis is unreachable nothing is published, so nothing is counted against the worker.
"""

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from billiard.process import active_children
from celery import Celery, signals
from celery.worker import state
from kombu import Exchange, Queue

from shared.redact import redact
from shared.settings import Settings
from shared.transport import brpop

log = logging.getLogger(__name__)

PROBE_TASK = "iris.watchdog_probe"
EXIT_STALLED = 3
# How long RabbitMQ keeps a watchdog queue nobody consumes (x-expires); Redis deletes an empty list by itself.
WATCHDOG_QUEUE_EXPIRES_SECONDS = 300


class Verdict(Enum):
    """What the watchdog does after one look at the consumer."""

    ALIVE = "alive"  # the consumer received something recently
    PROBE = "probe"  # idle: publish a probe to find out
    WAITING = "waiting"  # a probe is out and not yet overdue
    STALLED = "stalled"  # a probe Redis accepted was not received in time


@dataclass
class StallDetector:
    """Decide from timestamps alone whether the consumer is stalled; knows nothing of Celery or Redis."""

    interval: float
    timeout: float
    # Extra time allowed while tasks execute: a solo worker does not consume during a task, and a prefork
    # worker stops once its prefetch is full, for at most the task time limit.
    busy_grace: float
    last_seen: float
    probe_started_at: float = 0.0
    probe_sent_at: float | None = None
    last_tick: float | None = None

    def seen(self, now: float) -> None:
        """Record that the consumer received a message."""
        self.last_seen = now

    def probe_sent(self, started: float, accepted: float) -> None:
        """Record a probe whose publish began at ``started`` and that Redis accepted at ``accepted``.

        A receipt after ``started`` answers it; the timeout runs from ``accepted``, so a slow publish is not
        counted against the consumer.
        """
        self.probe_started_at, self.probe_sent_at = started, accepted

    def tick(self, now: float, busy: bool = False) -> Verdict:
        """Look at the consumer once."""
        if self.last_tick is not None and now - self.last_tick > 3 * self.interval:
            # The whole process was frozen (SIGSTOP, VM pause): time passed for the consumer too, so start over.
            self.probe_sent_at = None
        self.last_tick = now
        if self.probe_sent_at is not None:
            if self.last_seen >= self.probe_started_at:
                self.probe_sent_at = None
            elif now - self.probe_sent_at > self.timeout + (self.busy_grace if busy else 0.0):
                return Verdict.STALLED
            else:
                return Verdict.WAITING
        return Verdict.ALIVE if now - self.last_seen < self.interval else Verdict.PROBE


class ConsumerWatchdog:
    """A daemon thread of the worker's main process that probes its consumer and exits the worker if stalled."""

    def __init__(self, app: Celery, nodename: str, settings: Settings) -> None:
        self.app = app
        self.nodename = nodename
        # The default exchange routes by queue name, with no binding to lose when Redis restarts empty.
        name = f"{settings.iris_queue}.watchdog.{nodename}"
        # One queue per node name: on RabbitMQ it would outlive its worker; it goes once unused this long.
        self.queue = Queue(name, exchange=Exchange(""), routing_key=name, expires=WATCHDOG_QUEUE_EXPIRES_SECONDS)
        self.interval = settings.worker_watchdog_interval_seconds
        time_limit = float(app.conf.task_time_limit or 0)
        self.detector = StallDetector(settings.worker_watchdog_interval_seconds,
                                      settings.worker_watchdog_timeout_seconds, time_limit, time.monotonic())
        self.heartbeat = Path(settings.worker_heartbeat_file) if settings.worker_heartbeat_file else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.consumer: Any = None  # set when the worker is ready: its connection holds the BRPOP sockets
        self._broker_down = False

    def start(self) -> None:
        """Start watching (once the consumer is ready)."""
        if self._thread is None:
            self.detector.seen(time.monotonic())
            self._beat()
            self._thread = threading.Thread(target=self._run, name="iris-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching: a warm shutdown may legitimately stop consuming."""
        self._stop.set()

    def on_received(self, **_: Any) -> None:
        """Note that the consumer received a message (any message proves it consumes)."""
        self.detector.seen(time.monotonic())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            verdict = self.detector.tick(time.monotonic(), busy=len(state.active_requests) > 0)
            if verdict is Verdict.ALIVE:
                self._beat()
            elif verdict is Verdict.PROBE:
                self._probe()
            elif verdict is Verdict.STALLED and not self._stop.is_set():
                self._exit()

    def _probe(self) -> None:
        """Publish a probe to this worker's own queue; when Redis refuses it, the worker is not to blame."""
        started = time.monotonic()
        try:
            # A connection of its own each time: a pooled one may be the very connection that went stale.
            with self.app.connection_for_write() as conn:
                self.app.send_task(PROBE_TASK, queue=self.queue, ignore_result=True, producer=conn.Producer(),
                                   retry=False)
        except Exception as exc:  # broad: a probe that was not published, for whatever reason, says nothing of the
            # consumer; and this thread, the only one that can end a stalled worker, must outlive the failure.
            if not self._broker_down:
                log.warning("watchdog: cannot reach the broker (%s); not probing until it answers", redact(str(exc)))
            self._broker_down = True
            return
        self._broker_down = False
        self.detector.probe_sent(started, time.monotonic())

    def _beat(self) -> None:
        """Touch the heartbeat file that a container health check reads."""
        if self.heartbeat is not None:
            try:
                self.heartbeat.touch()
            except OSError as exc:
                log.warning("watchdog: cannot touch %s: %s", self.heartbeat, exc)

    def _salvage(self) -> None:
        """Put back on their queues the tasks Redis already handed to the wedged consumer's unread socket."""
        transport = getattr(getattr(self.consumer, "connection", None), "transport", None)
        if transport is not None and (count := brpop.salvage_unread_replies(transport)):
            log.warning("watchdog: put %d unread task(s) back on the queue before exiting", count)

    def _exit(self) -> None:
        """Exit at once: the stalled main thread cannot run Celery's shutdown, and a supervisor restarts us."""
        log.error("watchdog: %s received no probe within %.0f s although the broker accepted it; the consumer "
                  "is stalled, exiting with status %d so that a fresh worker replaces this one",
                  self.nodename, self.detector.timeout, EXIT_STALLED)
        try:
            self._salvage()
        finally:  # the salvage names the failures it expects; whatever else it raised, a stalled worker exits
            if (unexpected := sys.exception()) is not None:
                log.error("watchdog: the salvage of unread tasks failed: %s", redact(repr(unexpected)))
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            for child in active_children():  # prefork pool processes must not outlive their parent
                if child.pid:
                    os.kill(child.pid, signal.SIGKILL)
            os._exit(EXIT_STALLED)


def install(app: Celery, settings: Settings) -> None:
    """Register the probe task and start a watchdog in each worker that consumes this app's queue."""
    app.task(name=PROBE_TASK, ignore_result=True)(_probe_task)
    watchdogs: list[ConsumerWatchdog] = []

    def after_setup(sender: str, instance: Any, **_: Any) -> None:
        watchdog = ConsumerWatchdog(instance.app, sender, settings)
        instance.app.amqp.queues.select_add(watchdog.queue)
        signals.task_received.connect(watchdog.on_received, weak=False)
        # Edge batches run past Celery's strategy, which sends no task_received (worker/fastpaths/strategy.py).
        signals.task_prerun.connect(watchdog.on_received, weak=False)
        # A malformed message the guard dropped (worker/message_guard.py) was received all the same.
        signals.task_rejected.connect(watchdog.on_received, weak=False)
        watchdogs.append(watchdog)

    def ready(sender: Any = None, **_: Any) -> None:
        for watchdog in watchdogs:
            watchdog.consumer = sender
            watchdog.start()

    def shutting_down(**_: Any) -> None:
        for watchdog in watchdogs:
            watchdog.stop()

    signals.celeryd_after_setup.connect(after_setup, weak=False)
    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)


def _probe_task() -> None:
    """Do nothing: receiving this message is the proof the watchdog wants."""
