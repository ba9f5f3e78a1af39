"""Shadow a challenger: after a task has answered with the champion, predict a sampled share of its rows with the
``@challenger`` version too, in a daemon thread of the same process, and count whether the two agree.

Sampling is per task message (an edge batch, a batch request, an async row): a message is shadowed whole with
probability SHADOW_SAMPLE, so the share of rows shadowed is SHADOW_SAMPLE on average and deciding costs one
``random()`` per message. The tasks read their model through :meth:`Shadow.served`; a sampled message gets the
champion wrapped in a :class:`Recording`, which answers exactly as the champion does and leaves the rows and the
champion's answers in a slot of the task's thread. Celery's ``task_postrun`` signal, sent after the task has
stored and sent its answers, moves that slot to a :class:`ShadowQueue` bounded in rows: a message that does not
fit is dropped and counted, so shadowing never grows memory nor makes a task wait. The thread predicts, compares
labels row by row, keeps the counts for /metrics and the model-info reply, and about once a second adds them to
Redis, one hash per (champion, challenger) pair, which ``make promote-challenger`` reads
(training/promote_challenger.py).
"""

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from shared.settings import Settings
from worker.model import MODEL_ERRORS, ServedModel, first_line

log = logging.getLogger(__name__)
# What shadowing one message or flushing the counts may raise: the model's errors, Redis's and the socket's.
SHADOW_ERRORS: tuple[type[Exception], ...] = (*MODEL_ERRORS, redis.RedisError, OSError)

# How often the thread adds its counts to Redis: the promotion tool sees them at most this late.
FLUSH_SECONDS = 1.0

# Adds one pair's rows and agreements to its hash and renews its TTL, atomically, with only HGET, HSET and EXPIRE
# (deploy/redis/iris-acl.conf allows no HINCRBY); the workers of a pair add to the same hash.
_ADD = """
local rows = tonumber(redis.call('HGET', KEYS[1], 'rows') or '0') + tonumber(ARGV[1])
local agree = tonumber(redis.call('HGET', KEYS[1], 'agree') or '0') + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'rows', rows, 'agree', agree)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return rows
"""


def sampled(rate: float, draw: Callable[[], float] = random.random) -> bool:
    """Return True for a share ``rate`` of calls: 1 shadows every message, 0 none."""
    return draw() < rate


def agreements(champion: list[dict[str, Any]], challenger: list[dict[str, Any]]) -> int:
    """Return how many rows the two answered with the same label."""
    return sum(ours["pred_label"] == theirs["pred_label"] for ours, theirs in zip(champion, challenger, strict=True))


@dataclass
class ShadowItem:
    """One answered message waiting for the challenger."""

    rows: list[list[float]] | np.ndarray
    answers: list[dict[str, Any]]  # the champion's, as sent
    champion: str  # the version that answered
    challenger: ServedModel  # the version sampled for it


class ShadowQueue:
    """The answered messages waiting for the challenger, at most ``max_rows`` rows: what does not fit is dropped."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows = 0
        self.dropped = 0  # rows never shadowed because the queue was full
        self._items: deque[ShadowItem] = deque()
        self._ready = threading.Condition(threading.Lock())

    def offer(self, item: ShadowItem) -> bool:
        """Queue ``item`` if its rows fit, else count them as dropped; never wait."""
        size = len(item.answers)
        with self._ready:
            if self.rows + size > self.max_rows:
                self.dropped += size
                return False
            self._items.append(item)
            self.rows += size
            self._ready.notify()
        return True

    def take(self, timeout: float) -> ShadowItem | None:
        """Return the oldest item, waiting up to ``timeout`` seconds for one; None if none came."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self.rows -= len(item.answers)
            return item


class Recording:
    """The champion, answering as itself, that leaves each prediction's rows and answers for the shadow."""

    __slots__ = ("_challenger", "_champion", "_slot")

    def __init__(self, champion: ServedModel, challenger: ServedModel, slot: threading.local) -> None:
        self._champion = champion
        self._challenger = challenger
        self._slot = slot

    def predict_rows(self, rows: list[list[float]] | np.ndarray) -> list[dict[str, Any]]:
        """Predict with the champion, and keep the rows and its answers until the task has sent them."""
        answers = self._champion.predict_rows(rows)
        self._slot.item = ShadowItem(rows, answers, self._champion.version, self._challenger)
        return answers


class AgreementStore:
    """The Redis hashes of shadowed and agreeing rows, one per (champion, challenger) pair, each with a TTL."""

    def __init__(self, client: Callable[[], Any], settings: Settings) -> None:
        self._client = client  # the results Redis, asked for in the thread that writes (Celery's backend is per thread)
        self._settings = settings
        self._add: Any = None

    def add(self, champion: str, challenger: str, rows: int, agreed: int) -> None:
        """Add to the pair's counts and renew its TTL; raise redis.RedisError when Redis does not take it."""
        if self._add is None:
            self._add = self._client().register_script(_ADD)
        settings = self._settings
        self._add(keys=[settings.shadow_stats_key(champion, challenger)],
                  args=[rows, agreed, settings.shadow_stats_ttl_seconds])


@dataclass
class ShadowCounts:
    """Rows this process shadowed since it started, by outcome (iris_shadow_* and the model-info reply)."""

    agreed: int = 0
    disagreed: int = 0
    failed: int = 0  # rows of messages the challenger raised on


class Shadow:
    """Serve the champion to the tasks, recording a sampled share of messages; predict them with the challenger."""

    def __init__(self, champion: Callable[[], ServedModel], challenger: Callable[[], ServedModel | None],
                 sample: float, queue: ShadowQueue, store: AgreementStore | None = None,
                 draw: Callable[[], float] = random.random, clock: Callable[[], float] = time.monotonic) -> None:
        self._champion = champion  # the model serving now; raises ModelLoadError when none is loaded
        self._challenger = challenger  # the challenger loaded now, or None
        self.sample = sample
        self.queue = queue
        self._store = store
        self._draw = draw
        self._clock = clock
        self.counts = ShadowCounts()
        self._slot = threading.local()
        self._pending: dict[tuple[str, str], list[int]] = {}  # (champion, challenger): [rows, agreed] not yet in Redis
        self._flushed = clock()
        self._failing: set[str] = set()  # challenger versions whose failure was logged
        self._unstored = False  # Redis refused the last flush (logged once until one succeeds)
        self._pid: int | None = None
        self._stopped = False

    def served(self) -> ServedModel | Recording:
        """Return what a task predicts with: the champion, recording its answers when the message is sampled."""
        champion = self._champion()
        challenger = self._challenger()
        if challenger is None or challenger.version == champion.version or not sampled(self.sample, self._draw):
            return champion
        return Recording(champion, challenger, self._slot)

    def after_task(self, **_: Any) -> None:
        """Queue the answered message the task recorded, if any (task_postrun: the answers are sent by now)."""
        item = getattr(self._slot, "item", None)
        if item is None:
            return
        self._slot.item = None
        if self._pid != os.getpid():  # the first in this process: a prefork child has no thread of its parent's
            self.start()
        self.queue.offer(item)

    def start(self) -> None:
        """Start the shadowing thread of this process."""
        self._pid = os.getpid()
        threading.Thread(target=self.run, name="iris-shadow", daemon=True).start()

    def stop(self, **_: Any) -> None:
        """Stop after the message under way (worker_shutting_down); counts not yet flushed are lost with it."""
        self._stopped = True

    def run(self) -> None:
        """Shadow queued messages and flush the counts until stopped (the thread's body)."""
        while not self._stopped:
            try:
                item = self.queue.take(FLUSH_SECONDS)
                if item is not None:
                    self.shadow(item)
                    time.sleep(0)  # hand the GIL to the consumer's thread if it waits: the champion comes first
                if self._clock() - self._flushed >= FLUSH_SECONDS:
                    self.flush()
            except SHADOW_ERRORS as exc:  # the thread outlives a bad message; the champion never depended on it
                log.error("shadow: a message could not be shadowed: %s", first_line(exc),
                          extra={"event": "shadow_failed"})

    def shadow(self, item: ShadowItem) -> None:
        """Predict one message with its challenger and count the rows that agree with the champion's answers."""
        challenger = item.challenger
        try:
            predicted = challenger.predict_rows(item.rows)
        except MODEL_ERRORS as exc:  # the rows the champion answered are valid: the challenger cannot serve them
            self.counts.failed += len(item.answers)
            if challenger.version not in self._failing:  # one line per challenger version, not one per message
                self._failing.add(challenger.version)
                log.error("challenger version %s failed on rows the champion answered: %s", challenger.version,
                          first_line(exc), extra={"event": "challenger_failed", "model_version": challenger.version})
            return
        agreed = agreements(item.answers, predicted)
        self.counts.agreed += agreed
        self.counts.disagreed += len(predicted) - agreed
        pending = self._pending.setdefault((item.champion, challenger.version), [0, 0])
        pending[0] += len(predicted)
        pending[1] += agreed

    def flush(self) -> None:
        """Add the counts not yet in Redis to their pairs' hashes; keep them for the next flush if Redis refuses."""
        self._flushed = self._clock()
        if self._store is None:
            self._pending.clear()
            return
        for pair, (rows, agreed) in list(self._pending.items()):
            try:
                self._store.add(*pair, rows, agreed)
            except redis.RedisError as exc:
                if not self._unstored:
                    log.warning("shadow: cannot add the agreement to Redis, trying again in %g s: %s",
                                FLUSH_SECONDS, first_line(exc), extra={"event": "shadow_flush_failed"})
                self._unstored = True
                return
            del self._pending[pair]
        self._unstored = False

    def info(self) -> dict[str, Any]:
        """Describe the shadowing, for the model-info reply."""
        counts = self.counts
        return {"sample": self.sample, "agreed": counts.agreed, "disagreed": counts.disagreed,
                "failed": counts.failed, "dropped": self.queue.dropped, "queued_rows": self.queue.rows}
