"""Serve the version the registry alias names: load and warm a new one aside, then swap it in, or refuse it.

Tasks read ``ModelSwapper.current`` once per message and predict the whole batch with that one object, so no
batch is answered by two versions. A check runs off the hot path (worker/poller.py's thread) and makes the new
model fully ready before the one reference assignment that publishes it. A version that cannot be loaded, warmed
or matched to the contract's FEATURES and LABELS is refused: the old one keeps serving, one JSON line is logged,
and ``load_failures`` counts it. A refused version is not loaded again by the polls while the alias stays on it;
a reload request (``make reload``) tries it once more, for a failure that was only a registry hiccup.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from worker.model import ModelLoadError, ServedModel, first_line

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What one check did."""

    UNCHANGED = "unchanged"  # the alias names the version being served
    SWAPPED = "swapped"  # a new version now serves
    REFUSED = "refused"  # the alias names a version that cannot serve; the old one still does
    SKIPPED = "skipped"  # the alias still names the version refused before; a poll does not retry it
    UNREACHABLE = "unreachable"  # the registry did not answer; nothing changed


@dataclass
class SwapCounters:
    """What this worker process did since it started (the model-info reply carries them)."""

    checks: int = 0
    loads: int = 0  # versions loaded and warmed, the first one included
    swaps: int = 0
    load_failures: int = 0  # versions refused
    check_failures: int = 0  # checks that could not ask the registry


class ModelSwapper:
    """Hold the served model; compare it with the alias and replace it only by a version ready to serve."""

    def __init__(self, resolve: Callable[[], str], load: Callable[[str], ServedModel],
                 clock: Callable[[], float] = time.time) -> None:
        self._resolve = resolve  # the version the alias names now, raising ModelLoadError when it cannot tell
        self._load = load  # load, check and warm one version, raising ModelLoadError when it cannot serve
        self._clock = clock
        self.current: ServedModel | None = None
        self.counters = SwapCounters()
        self.refused: str | None = None
        self.last_check: dict[str, Any] | None = None
        self.last_failure: dict[str, Any] | None = None
        # Called after each swap, off the lock (a prefork pool replaces its children); when it raises ConnectionError
        # (the broker did not take it), retried at each check until it returns, so a broker outage at that moment
        # does not leave children on the old version.
        self.on_swap: Callable[[ServedModel], None] | None = None
        self._unannounced: ServedModel | None = None
        self._lock = threading.Lock()  # one check at a time: the poller's, or start-up's
        self._unreachable = False

    def start(self) -> ServedModel:
        """Load the version the alias names; raise ModelLoadError, for a worker that has nothing to serve."""
        with self._lock:
            model = self._load(self._resolve())
            self.counters.loads += 1
            self.current = model
            return model

    def check(self, force: bool = False) -> Outcome:
        """Swap in the version the alias names if it is new and ready to serve; ``force`` retries a refused one."""
        with self._lock:
            outcome, version, error = self._check(force)
            self.counters.checks += 1
            self.last_check = {"outcome": outcome.value, "alias_version": version, "error": error,
                               "at": self._clock()}
            if outcome is Outcome.SWAPPED:
                self._unannounced = self.current
        self._announce()
        return outcome

    def _announce(self) -> None:
        model = self._unannounced
        if model is None or self.on_swap is None:
            return
        try:
            self.on_swap(model)
        except ConnectionError as exc:
            log.error("after swapping in version %s: %s; trying again at the next check", model.version,
                      first_line(exc), extra={"event": "model_swap_hook_failed", "model_version": model.version})
            return
        if self._unannounced is model:
            self._unannounced = None

    def _check(self, force: bool) -> tuple[Outcome, str | None, str | None]:
        try:
            version = self._resolve()
        except ModelLoadError as exc:
            self.counters.check_failures += 1
            if not self._unreachable:  # one line per outage, not one per poll
                log.warning("model check: the registry does not answer, the served version stays: %s",
                            first_line(exc), extra={"event": "model_check_failed"})
            self._unreachable = True
            return Outcome.UNREACHABLE, None, first_line(exc)
        self._unreachable = False
        serving = self.current.version if self.current is not None else None
        if version == serving:
            self.refused = None  # the alias left the refused version: if it comes back, load it again
            return Outcome.UNCHANGED, version, None
        if version == self.refused and not force:
            return Outcome.SKIPPED, version, None
        try:
            model = self._load(version)
        except ModelLoadError as exc:
            return self._refuse(version, serving, exc)
        self.counters.loads += 1
        # The swap: one reference assignment. A batch that read the old model finishes with it; the next
        # batch reads the new one. Nothing else about the served model changes.
        self.current = model
        self.counters.swaps += 1
        self.refused = None
        log.warning("model swapped: %s version %s now serves, replacing version %s", model.name, version,
                    serving, extra={"event": "model_swapped", "model_version": version,
                                    "previous_version": serving})
        return Outcome.SWAPPED, version, None

    def _refuse(self, version: str, serving: str | None, exc: ModelLoadError) -> tuple[Outcome, str, str]:
        reason = first_line(exc)
        self.counters.load_failures += 1
        self.refused = version
        self.last_failure = {"version": version, "error": reason, "at": self._clock()}
        log.error("model version %s refused, version %s keeps serving: %s", version, serving, reason,
                  extra={"event": "model_refused", "refused_version": version, "model_version": serving})
        return Outcome.REFUSED, version, reason

    def info(self) -> dict[str, Any]:
        """Describe the served model and what the swaps did, for the model-info reply."""
        served = self.current.info() if self.current is not None else {}
        return {**served, "counters": asdict(self.counters), "last_check": self.last_check,
                "last_failure": self.last_failure}
