"""Serve the version the registry alias names: load and warm a new one aside, then swap it in, or refuse it.

Tasks read ``ModelSwapper.current`` once per message and predict the whole batch with that one object, so no
batch is answered by two versions. A check runs off the hot path (worker/poller.py's thread) and makes the new
model fully ready before the one reference assignment that publishes it. A version that cannot be loaded, warmed
or matched to the contract's FEATURES and LABELS is refused: the old one keeps serving, one JSON line is logged,
and ``load_failures`` counts it. A refused version is not loaded again by the polls while the alias stays on it;
a reload request (``make reload``) tries it once more, for a failure that was only a registry hiccup.

The challenger (worker/shadow.py) is followed by a second swapper with ``role="challenger"``: its alias may be
unset, and when it is removed the swapper holds no model (``Outcome.REMOVED``). Its log lines name the challenger,
so a refused challenger never reads as a refused champion.
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
    REMOVED = "removed"  # the alias was removed (a challenger's may be); no version is held any more


@dataclass
class SwapCounters:
    """What this worker process did since it started (the model-info reply carries them)."""

    checks: int = 0
    loads: int = 0  # versions loaded and warmed, the first one included
    swaps: int = 0
    load_failures: int = 0  # versions refused
    check_failures: int = 0  # checks that could not ask the registry


@dataclass(frozen=True)
class _Words:
    """How a swapper's log lines name its role and what its model does."""

    name: str  # the first word of its lines
    event: str  # the prefix of its log events: model_swapped, challenger_refused, ...
    held: str  # "the <held> version stays"
    does: str  # "version 3 now <does>"
    refused: str  # the refusal line: the refused version, the one serving, the reason


_WORDS = {
    "champion": _Words("model", "model", "served", "serves",
                       "model version %s refused, version %s keeps serving: %s"),
    "challenger": _Words("challenger", "challenger", "shadowed", "shadows",
                         "challenger version %s refused (the shadowed version stays %s; the champion serves as "
                         "before): %s"),
}


class ModelSwapper:
    """Hold the served model; compare it with the alias and replace it only by a version ready to serve."""

    def __init__(self, resolve: Callable[[], str | None], load: Callable[[str], ServedModel],
                 clock: Callable[[], float] = time.time, role: str = "champion") -> None:
        # The version the alias names now (None: no version has it), raising ModelLoadError when it cannot tell.
        self._resolve = resolve
        self._load = load  # load, check and warm one version, raising ModelLoadError when it cannot serve
        self._clock = clock
        self.role = role
        self._say = _WORDS[role]
        self.current: ServedModel | None = None
        self.counters = SwapCounters()
        self.refused: str | None = None
        self.last_check: dict[str, Any] | None = None
        self.last_failure: dict[str, Any] | None = None
        # Called after each swap or removal, off the lock, with the model now held (a prefork pool replaces its
        # children); when it raises ConnectionError (the broker did not take it), retried at each check until it
        # returns, so a broker outage at that moment does not leave children on the old version.
        self.on_swap: Callable[[ServedModel | None], None] | None = None
        self._unannounced = False
        self._lock = threading.Lock()  # one check at a time: the poller's, or start-up's
        self._unreachable = False

    def start(self) -> ServedModel:
        """Load the version the alias names; raise ModelLoadError, for a worker that has nothing to serve."""
        with self._lock:
            version = self._resolve()
            if version is None:
                raise ModelLoadError(f"no version has the {self.role} alias")
            model = self._load(version)
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
            if outcome in (Outcome.SWAPPED, Outcome.REMOVED):
                self._unannounced = True
        self._announce()
        return outcome

    def _announce(self) -> None:
        model = self.current
        if not self._unannounced or self.on_swap is None:
            return
        version = model.version if model is not None else None
        try:
            self.on_swap(model)
        except ConnectionError as exc:
            log.error("after swapping in %s version %s: %s; trying again at the next check", self.role, version,
                      first_line(exc), extra={"event": "model_swap_hook_failed", "model_version": version})
            return
        if self.current is model:  # else another change came meanwhile, and is announced at the next check
            self._unannounced = False

    def _check(self, force: bool) -> tuple[Outcome, str | None, str | None]:
        try:
            version = self._resolve()
        except ModelLoadError as exc:
            self.counters.check_failures += 1
            if not self._unreachable:  # one line per outage, not one per poll
                log.warning("%s check: the registry does not answer, the %s version stays: %s", self._say.name,
                            self._say.held, first_line(exc), extra={"event": f"{self._say.event}_check_failed"})
            self._unreachable = True
            return Outcome.UNREACHABLE, None, first_line(exc)
        self._unreachable = False
        serving = self.current.version if self.current is not None else None
        if version is None:  # no version has the alias (a challenger's may be unset)
            return self._remove(serving) if serving is not None else (Outcome.UNCHANGED, None, None)
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
        log.warning("%s swapped: %s version %s now %s, replacing version %s", self._say.name, model.name, version,
                    self._say.does, serving, extra={"event": f"{self._say.event}_swapped", "model_version": version,
                                                    "previous_version": serving})
        return Outcome.SWAPPED, version, None

    def _remove(self, serving: str) -> tuple[Outcome, None, None]:
        # Only a challenger's alias is ever found unset: the champion's resolve raises instead.
        self.current = None
        self.refused = None
        log.warning("%s removed: the alias names no version, version %s no longer %s", self._say.name, serving,
                    self._say.does, extra={"event": f"{self._say.event}_removed", "previous_version": serving})
        return Outcome.REMOVED, None, None

    def _refuse(self, version: str, serving: str | None, exc: ModelLoadError) -> tuple[Outcome, str, str]:
        reason = first_line(exc)
        self.counters.load_failures += 1
        self.refused = version
        self.last_failure = {"version": version, "error": reason, "at": self._clock()}
        log.error(self._say.refused, version, serving, reason,
                  extra={"event": f"{self._say.event}_refused", "refused_version": version, "model_version": serving})
        return Outcome.REFUSED, version, reason

    def info(self) -> dict[str, Any]:
        """Describe the served model and what the swaps did, for the model-info reply."""
        served = self.current.info() if self.current is not None else {}
        return {**served, "counters": asdict(self.counters), "last_check": self.last_check,
                "last_failure": self.last_failure}
