"""Run the model check every MODEL_POLL_SECONDS, and at once on request, in a thread of the worker's main process.

A thread, not a timer on the consumer's event loop: with the solo pool (the default) that loop also runs the
tasks, so a registry call or a model load of a second or more there would stall every request queued behind
it. In this thread the load only competes for the GIL. Requests (the ``iris_reload_model`` command) arrive on
the consumer's thread, which only sets an event and answers at once.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Waitable(Protocol):
    """The part of threading.Event the poller uses; tests pass one that advances a fake clock."""

    def wait(self, timeout: float | None = None) -> bool: ...

    def set(self) -> None: ...

    def clear(self) -> None: ...


class ModelPoller:
    """Call ``check(forced)`` every ``interval`` seconds after the last check, and soon after each request."""

    def __init__(self, check: Callable[[bool], Any], interval: float, clock: Callable[[], float] = time.monotonic,
                 event: Waitable | None = None) -> None:
        self._check = check
        self.interval = interval
        self._clock = clock
        self._event: Waitable = event if event is not None else threading.Event()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None
        # Requests numbered 1, 2, ...: ``answered`` reaches a request's number once a check that began after
        # it has finished, so a caller knows when its request was served.
        self.requested = 0
        self.answered = 0

    def start(self) -> None:
        """Start polling in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="iris-model-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the check under way, if any."""
        self._stopped = True
        self._event.set()

    def request(self) -> int:
        """Ask for a check now; return this request's number (see ``answered``)."""
        with self._lock:
            self.requested += 1
            number = self.requested
        self._event.set()
        return number

    def info(self) -> dict[str, Any]:
        """Describe the polling, for the model-info reply."""
        return {"poll_seconds": self.interval, "reload": {"requested": self.requested, "answered": self.answered}}

    def run(self) -> None:
        """Poll until stopped (the thread's body; tests call it directly)."""
        due = self._clock() + self.interval
        while True:
            woken = self._event.wait(max(0.0, due - self._clock()))
            if self._stopped:
                return
            covering = None
            if woken:
                self._event.clear()
                with self._lock:  # a request made after this read is served by the next check
                    covering = self.requested
            elif self._clock() < due:
                continue
            try:
                self._check(woken)
            except Exception:  # broad: the checks log the failures they expect; this thread must outlive any other
                log.exception("model check failed")
            if covering is not None:
                self.answered = covering
            due = self._clock() + self.interval
