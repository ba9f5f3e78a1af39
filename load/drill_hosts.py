"""Several hosts on one machine: ``make drill-hosts`` (``python -m load.drill_hosts [--short]``). Needs root.

Five hosts, each a Linux network namespace with an address of its own on a bridge (load/netns.py): Redis (AOF on,
a password), two API hosts (``python -m api``, granian, bound to the host's address) and two worker hosts (a solo
``celery -A worker worker`` each, restarted by a small supervisor here when it exits, with its metrics port on the
host's address). The model is trained once into a temporary MLflow store first; every host reads it. The load
generator runs in the root namespace: threads that send sync ``/v1/classify`` and async ``/v1/classify/async``
requests, round-robin to both API hosts, at ``--rate`` requests a second. Like a load balancer, a client takes an
API host out of the rotation when it cannot connect to it, sends the request to the other, and puts the host back
once its ``/livez`` answers. Every outcome is recorded (host, kind, status, latency, task id, poll URL). Phases:

1. warm-up under load;
2. worker host 2's cable is pulled (load/netns.py, ``cut``) for 30 s, then put back: ``rejoin_s`` is the time from
   then until that worker's processed-task count (its Prometheus port) rises again, or a replacement's does;
3. API host 1's processes are SIGKILLed mid-load; the load goes on through API host 2;
4. 100 ms delay and 5% loss on each direction of worker host 1's link for 60 s (tc netem, or a user-space relay
   where the kernel has no netem): every second must see answers (no wedge), a scrape of worker 1 must take two
   round trips, and at least half as many sync answers must take the delay one way (100 ms) as worker 1 ran edge
   batches over the link;
5. the load stops, and a backlog of 20,000 async tasks is queued through the API with both workers stopped; then
   one worker host starts, and ``drain_1_s`` is the time from the first worker ready (model loaded) until all of
   them are SUCCESS; again with both worker hosts for ``drain_2_s``;
6. every accepted async task and every 504's poll URL is polled through the API until SUCCESS, within
   VISIBILITY_TIMEOUT_SECONDS and a margin of the last fault (a task a cut worker held returns after it).

``--short`` (what ``make test`` runs) keeps the phases and shortens them: cut 10 s, netem 15 s, backlog 2,000,
VISIBILITY_TIMEOUT_SECONDS 20. Progress goes to stderr; the last line, on stdout, is::

    hosts=5 requests=R failed=F lost=L rejoin_s=S drain_1_s=D1 drain_2_s=D2

``requests`` counts every classify request sent (load and backlogs); ``failed`` those not answered 200, 202, or
504 with a poll URL, except requests in flight on the API host when it was killed (reported apart); ``lost`` the
accepted tasks (202, or 504 with a poll URL) that never reached SUCCESS. The exit status is 1 when anything was
lost or failed, the cut worker did not consume within 30 s of its cable coming back, or the bad link wedged the
stack or showed no delay; 2 when the drill could not run; 130 or 143 after SIGINT or SIGTERM. Whatever ends it,
every namespace, link, process and temporary file the run made is removed, and a run also removes what an earlier
one that was killed (SIGKILL) left behind.
"""

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import redis

from load import netns

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}).encode()
SYNC, ASYNC = "sync", "async"
PATHS = {SYNC: "/v1/classify", ASYNC: "/v1/classify/async"}
API_PORT, REDIS_PORT, WORKER_METRICS_PORT = 9191, 6379, 9192
QUEUE = "iris"  # the async tasks' queue (IRIS_QUEUE's default)
REJOIN_LIMIT_S = 30.0  # the cut worker must consume again within this long of its cable coming back
DELAY_MS, LOSS_PCT = 100.0, 5.0  # the bad link, on each direction
CONNECT_TIMEOUT_S = 2.0
_start = time.monotonic()


def say(message: str) -> None:
    """Print one progress line on stderr, with the time since the drill started."""
    print(f"drill-hosts +{time.monotonic() - _start:6.1f}s  {message}", file=sys.stderr, flush=True)


class DrillError(Exception):
    """The drill could not run (a host did not start, a command failed): exit status 2."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --- outcomes and what they count as (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One classify request as the client saw it."""

    kind: str  # SYNC or ASYNC
    host: str  # the API host it was sent to ("" when none was up)
    phase: str
    started: float  # time.monotonic()
    ended: float
    status: int | None = None  # the HTTP status; None when no answer came (connection error, timeout)
    error: str | None = None
    task_id: str | None = None
    poll_url: str | None = None

    @property
    def latency(self) -> float:
        return self.ended - self.started


class Verdict(Enum):
    """What one outcome counts as."""

    ANSWERED = "answered"  # a sync request answered 200
    ACCEPTED = "accepted"  # 202, or a sync 504 with a poll URL: its task must reach SUCCESS
    IN_FLIGHT_ON_DEAD_HOST = "in flight on a killed API host"  # sent before the kill, never answered
    FAILED = "failed"


def verdict(outcome: Outcome, killed_at: Mapping[str, float]) -> Verdict:
    """Judge one outcome; ``killed_at`` maps each API host the drill killed to when it was dead."""
    if outcome.kind == SYNC and outcome.status == 200 and outcome.task_id:
        return Verdict.ANSWERED
    if outcome.task_id and outcome.poll_url and (
            (outcome.kind == ASYNC and outcome.status == 202) or (outcome.kind == SYNC and outcome.status == 504)):
        return Verdict.ACCEPTED
    killed = killed_at.get(outcome.host)
    if outcome.status is None and killed is not None and outcome.started <= killed:
        return Verdict.IN_FLIGHT_ON_DEAD_HOST
    return Verdict.FAILED


def parse_answer(kind: str, status: int, body: bytes) -> tuple[str | None, str | None]:
    """Return (task id, poll URL) from a classify answer's envelope; (None, None) when it has none."""
    try:
        data = json.loads(body)["data"]
        task_id = data.get("task_id")
        poll_url = data.get("status_url") if status in (202, 504) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None
    return (task_id if isinstance(task_id, str) else None), (poll_url if isinstance(poll_url, str) else None)


@dataclass(frozen=True)
class Tally:
    """The counts of a set of outcomes, once every accepted task's final state is known."""

    requests: int
    answered: int
    accepted: int
    in_flight: int
    failed: int
    lost: int
    lost_ids: tuple[str, ...] = ()


def tally(outcomes: Iterable[Outcome], killed_at: Mapping[str, float], final: Mapping[str, str]) -> Tally:
    """Count ``outcomes``; ``final`` maps accepted task ids to the last state seen (SUCCESS, PENDING, ...)."""
    verdicts = Counter[Verdict]()
    lost: list[str] = []
    requests = 0
    for outcome in outcomes:
        requests += 1
        judged = verdict(outcome, killed_at)
        verdicts[judged] += 1
        if judged is Verdict.ACCEPTED and final.get(outcome.task_id or "") != "SUCCESS":
            lost.append(outcome.task_id or "")
    return Tally(requests, verdicts[Verdict.ANSWERED], verdicts[Verdict.ACCEPTED],
                 verdicts[Verdict.IN_FLIGHT_ON_DEAD_HOST], verdicts[Verdict.FAILED], len(lost), tuple(lost))


@dataclass(frozen=True)
class Summary:
    """The one line the drill prints at the end."""

    hosts: int
    requests: int
    failed: int
    lost: int
    rejoin_s: float | None
    drain_1_s: float | None
    drain_2_s: float | None

    def line(self) -> str:
        def seconds(value: float | None) -> str:
            return "none" if value is None else f"{value:.1f}"

        return (f"hosts={self.hosts} requests={self.requests} failed={self.failed} lost={self.lost} "
                f"rejoin_s={seconds(self.rejoin_s)} drain_1_s={seconds(self.drain_1_s)} "
                f"drain_2_s={seconds(self.drain_2_s)}")

    @classmethod
    def parse(cls, line: str) -> "Summary":
        """Read a line :meth:`line` printed; ValueError if it is not one."""
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        names = ("hosts", "requests", "failed", "lost", "rejoin_s", "drain_1_s", "drain_2_s")
        if set(fields) != set(names) or len(line.split()) != len(names):
            raise ValueError(f"not a drill-hosts summary line: {line!r}")

        def seconds(value: str) -> float | None:
            return None if value == "none" else float(value)

        return cls(int(fields["hosts"]), int(fields["requests"]), int(fields["failed"]), int(fields["lost"]),
                   seconds(fields["rejoin_s"]), seconds(fields["drain_1_s"]), seconds(fields["drain_2_s"]))


def percentile(values: Sequence[float], share: float) -> float:
    """Return the value below which ``share`` of ``values`` lie (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(round(share * len(ordered), 9))  # round first: 0.9 * 100 is 90.00000000000001
    return ordered[min(len(ordered), max(1, rank)) - 1]


def silent_seconds(ended: Iterable[float], start: float, end: float) -> list[int]:
    """Return the whole seconds of [start, end) (counted from ``start``) in which nothing ended: a wedge shows as
    a run of them."""
    seen = {int(t - start) for t in ended if start <= t < end}
    return [second for second in range(int(end - start)) if second not in seen]


def phase_report(name: str, outcomes: Sequence[Outcome], killed_at: Mapping[str, float]) -> str:
    """Return one progress line with what a phase's outcomes counted as and its sync latencies."""
    counts = Counter(verdict(o, killed_at) for o in outcomes)
    sync_ms = [o.latency * 1000 for o in outcomes if o.kind == SYNC and o.status == 200]
    timeouts = sum(1 for o in outcomes if o.kind == SYNC and o.status == 504)
    hosts = Counter(o.host for o in outcomes)
    return (f"{name}: {len(outcomes)} requests ({', '.join(f'{h} {n}' for h, n in sorted(hosts.items()))}); "
            f"sync 200: {len(sync_ms)} (p50 {percentile(sync_ms, 0.5):.0f} ms, p90 {percentile(sync_ms, 0.9):.0f} ms, "
            f"p99 {percentile(sync_ms, 0.99):.0f} ms, max {max(sync_ms, default=0):.0f} ms); sync 504: {timeouts}; "
            f"async 202: {sum(1 for o in outcomes if o.kind == ASYNC and o.status == 202)}; "
            f"in flight on a killed host: {counts[Verdict.IN_FLIGHT_ON_DEAD_HOST]}; failed: {counts[Verdict.FAILED]}")


# The worker's log line when its sweep pushes back tasks a lost BRPOP reply took (shared/transport/ledger.py).
RESTORED = re.compile(r"restored (\d+) task\(s\) of queue")

ROWS_TASK = "iris.classify_rows"  # the task of an edge batch: every sync request's row goes in one


def judge_bad_link(outcomes: Sequence[Outcome], start: float, end: float, ran: Mapping[str, float] | None,
                   scrape_s: float | None) -> list[str]:
    """Check the bad-link phase: answers every second (no wedge), and the delay where it must show.

    ``scrape_s`` is how long one scrape of the worker's metrics port took over the bad link: a connect and a
    request, two round trips at least. ``ran`` is what that worker ran during the phase, by task name (None if it
    could not be read). Each edge batch it ran answered at least one sync request, which waited at least the delay
    one way (a batch Redis wrote to the worker's BRPOP just before the phase crosses the link only with its reply);
    half as many slow answers as batches is the bar, for batches that straddle the phase's ends.
    Returns the problems found, and says what it saw.
    """
    problems = []
    silent = silent_seconds([o.ended for o in outcomes if o.status in (200, 202)], start, end)
    if silent:
        problems.append(f"bad link: no answer at all in second(s) {silent} of the phase (a wedge)")
    round_trip = 2 * DELAY_MS / 1000
    if scrape_s is not None and scrape_s < 2 * round_trip:
        problems.append(f"bad link: a scrape of worker1 took {scrape_s:.2f} s, less than two round trips: the link "
                        "is not delayed")
    sync = [o.latency for o in outcomes if o.kind == SYNC and o.status in (200, 504)]
    one_way = DELAY_MS / 1000  # the other worker answers in milliseconds: this much is the link's
    slow = sum(1 for latency in sync if latency >= one_way)
    batches = None if ran is None else round(ran.get(ROWS_TASK, 0.0))
    ran_text = ("worker1's task counts could not be read" if ran is None or batches is None else
                f"worker1 ran {batches} edge batches and {round(sum(ran.values())) - batches} other tasks over it")
    say(f"bad link: answers in every second: {'no' if silent else 'yes'}; {ran_text}; {slow} of {len(sync)} sync "
        f"answers took >= {one_way * 1000:.0f} ms (the delay one way); sync p50 "
        f"{percentile(sync, 0.5) * 1000:.0f} ms, p99 {percentile(sync, 0.99) * 1000:.0f} ms, max "
        f"{max(sync, default=0) * 1000:.0f} ms")
    if batches is not None and slow < batches / 2:
        problems.append(f"bad link: worker1 answered {batches} edge batches over it, but only {slow} sync answers "
                        f"took the delay one way ({one_way * 1000:.0f} ms)")
    return problems


# --- the plan ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How long each phase lasts and how big the backlog is."""

    warmup_s: float
    cut_s: float
    after_kill_s: float
    netem_s: float
    backlog: int
    visibility_timeout_s: int

    def scaled(self, factor: float) -> "Plan":
        """Return this plan with every timed phase ``factor`` times as long (not the backlog or the timeout)."""
        return replace(self, warmup_s=self.warmup_s * factor, cut_s=self.cut_s * factor,
                       after_kill_s=self.after_kill_s * factor, netem_s=self.netem_s * factor)


# VISIBILITY_TIMEOUT_SECONDS: the product's default in the full drill; in the short one the 20 s make test's own
# SIGKILL drill uses, so that a task a cut worker held comes back within the run.
FULL = Plan(warmup_s=10, cut_s=30, after_kill_s=15, netem_s=60, backlog=20_000, visibility_timeout_s=120)
SHORT = Plan(warmup_s=5, cut_s=10, after_kill_s=8, netem_s=15, backlog=2_000, visibility_timeout_s=20)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m load.drill_hosts", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--short", action="store_true",
                        help="shorter phases and a backlog of 2,000 (what make test runs; about 3 minutes)")
    parser.add_argument("--seconds-scale", type=float, default=1.0,
                        help="multiply every timed phase (warm-up, cut, after the kill, bad link) by this")
    parser.add_argument("--backlog", type=int, help="async tasks per drain (default 20,000; 2,000 with --short)")
    parser.add_argument("--rate", type=float, default=150.0, help="load: requests a second, half sync, half async")
    parser.add_argument("--threads", type=int, default=32, help="load: client threads")
    parser.add_argument("--tracking-uri", help="serve this MLflow store's champion instead of training one")
    parser.add_argument("--keep-logs", type=Path, help="copy every host's log into this directory at the end")
    args = parser.parse_args(argv)
    if args.seconds_scale <= 0 or args.rate <= 0 or args.threads < 1 or (args.backlog is not None and args.backlog < 1):
        parser.error("--seconds-scale and --rate must be positive, --threads and --backlog at least 1")
    plan = (SHORT if args.short else FULL).scaled(args.seconds_scale)
    args.plan = plan if args.backlog is None else replace(plan, backlog=args.backlog)
    return args


# --- programs on hosts ---------------------------------------------------------------------------------------------


class HostProcess:
    """One program on one host (``ip netns exec``), in a process group of its own. With ``supervise``, a thread
    starts it again 1 s after it exits, and counts the exits, until :meth:`stop` or :meth:`kill`."""

    def __init__(self, name: str, host: netns.Host, argv: list[str], env: dict[str, str], log: Path,
                 supervise: bool = False) -> None:
        self.name, self.host, self.argv, self.env, self.log = name, host, argv, env, log
        self.supervise = supervise
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawns = 0
        self.exits: list[int] = []  # exit statuses the supervisor saw (not those of stop or kill)
        self._generation = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._generation += 1
            self._spawn()
            generation = self._generation
        if self.supervise:
            threading.Thread(target=self._watch, args=(generation,), name=f"supervise-{self.name}",
                             daemon=True).start()

    def _spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.host.exec_argv(self.argv), cwd=ROOT, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.spawns += 1

    def _watch(self, generation: int) -> None:
        while True:
            proc = self.proc
            if proc is None:
                return
            status = proc.wait()
            with self._lock:
                if generation != self._generation:
                    return
                self.exits.append(status)
            say(f"{self.name} exited with status {status}; its supervisor starts it again in 1 s")
            time.sleep(1)
            with self._lock:
                if generation != self._generation:
                    return
                self._spawn()

    def abandon(self) -> None:
        """Restart the program no more, and SIGTERM its group (the clean-up waits, then SIGKILLs it)."""
        with self._lock:
            self._generation += 1
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the program's group (a warm shutdown), SIGKILL it after ``timeout``; no restart."""
        with self._lock:
            self._generation += 1
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self._signal(signal.SIGKILL)  # and whatever the program left in its group
        self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the program's whole group at once, as a host that dies; no restart.

        Returns once the host holds no TCP socket open: until then it is still dying. A forked server process may
        outlive the one reaped here, and a process whose main thread is gone closes its sockets only when its
        last thread ends, while ``ip netns pids`` no longer lists it.
        """
        with self._lock:
            self._generation += 1
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            netns.kill_all(netns.namespace_pids(self.host.namespace))
            if not netns.held_sockets(self.host.namespace):
                return
            time.sleep(0.01)

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def scrape_tasks(url: str, timeout: float = 2.0) -> dict[str, float] | None:
    """Return how many tasks of each name a worker has run (iris_task_duration_seconds_count), or None if no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    return parse_task_counts(text)


def parse_task_counts(text: str) -> dict[str, float]:
    """Read ``iris_task_duration_seconds_count{task="..."} N`` lines of a Prometheus page into {task: N}."""
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("iris_task_duration_seconds_count{"):
            labels, _, value = line.rpartition(" ")
            task = labels.partition('task="')[2].partition('"')[0]
            counts[task] = counts.get(task, 0.0) + float(value)
    return counts


def scrape_processed(url: str) -> float | None:
    """Return how many tasks a worker has run in all, or None if its metrics port does not answer."""
    counts = scrape_tasks(url)
    return None if counts is None else sum(counts.values())


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


# --- load ----------------------------------------------------------------------------------------------------------


class Balancer:
    """Round-robin over the API hosts that are up. A host a client could not connect to is out until its ``/livez``
    answers again (a thread checks twice a second), as a load balancer's health check does."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self.addresses = dict(addresses)
        self.order = sorted(addresses)
        self.up = set(addresses)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._check, name="balancer-health", daemon=True).start()

    def pick(self) -> str | None:
        with self._lock:
            up = [host for host in self.order if host in self.up]
            return up[next(self._turn) % len(up)] if up else None

    def mark_down(self, host: str, why: str) -> None:
        with self._lock:
            if host not in self.up:
                return
            self.up.discard(host)
        say(f"balancer: {host} is out of the rotation ({why})")

    def _check(self) -> None:
        while not self._stop.wait(0.5):
            for host in [h for h in self.order if h not in self.up]:
                if http_ok(f"http://{self.addresses[host]}:{API_PORT}/livez", timeout=0.5):
                    with self._lock:
                        self.up.add(host)
                    say(f"balancer: {host} answers /livez again, back in the rotation")

    def close(self) -> None:
        self._stop.set()


class Client:
    """One thread's HTTP/1.1 connections, one kept alive per API host."""

    def __init__(self, balancer: Balancer, api_key: str, read_timeout: float) -> None:
        self.balancer = balancer
        self.headers = {"Content-Type": "application/json", "X-API-Key": api_key}
        self.read_timeout = read_timeout
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def _connection(self, host: str) -> http.client.HTTPConnection | None:
        """Return a live connection to ``host``, or None (and the host out of the rotation) if none can be made."""
        conn = self.conns.get(host)
        if conn is not None and conn.sock is not None:
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable:  # an idle kept-alive connection with nothing to read: the server has not closed it
                return conn
        if conn is not None:
            conn.close()
        conn = http.client.HTTPConnection(self.balancer.addresses[host], API_PORT, timeout=CONNECT_TIMEOUT_S)
        try:
            conn.connect()
        except OSError as exc:
            self.conns.pop(host, None)
            self.balancer.mark_down(host, f"{type(exc).__name__}: {exc}")
            return None
        assert conn.sock is not None
        conn.sock.settimeout(self.read_timeout)
        self.conns[host] = conn
        return conn

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[str, int | None, bytes, str | None]:
        """Send one request to the next API host up; return (host, status, body, error).

        A host that refuses the connection never saw the request, so it goes to the next host; an error once the
        request is sent is returned, never retried (a POST may have been acted on).
        """
        deadline = time.monotonic() + 10
        while True:
            target = self.balancer.pick()
            if target is None:
                if time.monotonic() > deadline:
                    return "", None, b"", "no API host is up"
                time.sleep(0.1)
                continue
            conn = self._connection(target)
            if conn is None:
                continue
            try:
                conn.request(method, path, body=body, headers=self.headers)
                resp = conn.getresponse()
                return target, resp.status, resp.read(), None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self.conns.pop(target, None)
                return target, None, b"", f"{type(exc).__name__}: {exc}"

    def classify(self, kind: str, phase: str) -> Outcome:
        started = time.monotonic()
        host, status, body, error = self.request("POST", PATHS[kind], BODY)
        task_id, poll_url = parse_answer(kind, status, body) if status is not None else (None, None)
        return Outcome(kind, host, phase, started, time.monotonic(), status, error, task_id, poll_url)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


class Load:
    """``threads`` clients sending sync and async requests in turn, ``rate`` a second in all, until :meth:`stop`."""

    def __init__(self, balancer: Balancer, api_key: str, threads: int, rate: float, read_timeout: float,
                 max_requests: int) -> None:
        self.balancer, self.api_key, self.read_timeout = balancer, api_key, read_timeout
        self.interval = 1.0 / rate
        self.max_requests = max_requests
        self.phase = "warm-up"
        self.outcomes: list[Outcome] = []
        self._turn = itertools.count()
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"load-{n}", daemon=True) for n in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _slot(self) -> tuple[float, int]:
        with self._lock:
            slot = max(time.monotonic(), self._next)
            self._next = slot + self.interval
            return slot, next(self._turn)

    def _run(self) -> None:
        client = Client(self.balancer, self.api_key, self.read_timeout)
        try:
            while not self._stop.is_set():
                slot, turn = self._slot()
                if turn >= self.max_requests or self._stop.wait(max(0.0, slot - time.monotonic())):
                    return
                self.outcomes.append(client.classify(SYNC if turn % 2 == 0 else ASYNC, self.phase))
        finally:
            client.close()

    def halt(self) -> None:
        """Send no more requests (those in flight still finish)."""
        self._stop.set()

    def stop(self) -> None:
        """Send no more requests, and wait for those in flight."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.read_timeout + 5)


def burst(balancer: Balancer, api_key: str, count: int, threads: int, phase: str) -> list[Outcome]:
    """Send ``count`` async requests as fast as ``threads`` clients can; return their outcomes."""
    outcomes: list[Outcome] = []
    turns = itertools.count()

    def send() -> None:
        client = Client(balancer, api_key, read_timeout=30)
        try:
            while next(turns) < count:
                outcomes.append(client.classify(ASYNC, phase))
        finally:
            client.close()

    workers = [threading.Thread(target=send, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return outcomes


def poll_tasks(balancer: Balancer, api_key: str, urls: Mapping[str, str], deadline: float,
               threads: int = 16) -> dict[str, str]:
    """Poll each task's URL through the API until SUCCESS or ``deadline``; return each one's last state."""
    last: dict[str, str] = dict.fromkeys(urls, "not polled")
    lock = threading.Lock()

    def work(queue: Iterator[str]) -> None:
        client = Client(balancer, api_key, read_timeout=10)
        try:
            while True:
                with lock:
                    task_id = next(queue, None)
                if task_id is None:
                    return
                _, status, body, error = client.request("GET", urls[task_id])
                if status == 200:
                    try:
                        last[task_id] = str(json.loads(body)["data"]["status"])
                    except (ValueError, KeyError, TypeError):
                        last[task_id] = "unreadable answer"
                else:
                    last[task_id] = f"HTTP {status}" if status is not None else f"no answer: {error}"
        finally:
            client.close()

    pending = list(urls)
    while pending:
        queue = iter(list(pending))
        pool = [threading.Thread(target=work, args=(queue,), daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        pending = [task_id for task_id in pending if last[task_id] != "SUCCESS"]
        if pending:
            if time.monotonic() > deadline:
                break
            time.sleep(1)
    return last


def stored_states(results: redis.Redis, ids: Sequence[str]) -> dict[str, str]:
    """Read the states the result backend holds for ``ids`` (those GET /v1/tasks/<id> answers with)."""
    states: dict[str, str] = {}
    for start in range(0, len(ids), 2000):
        chunk = ids[start:start + 2000]
        for task_id, raw in zip(chunk, results.mget([f"celery-task-meta-{t}" for t in chunk]), strict=True):
            states[task_id] = str(json.loads(raw)["status"]) if raw else "PENDING"
    return states


# --- the drill -----------------------------------------------------------------------------------------------------


@dataclass
class Results:
    """What the phases measured."""

    killed_at: dict[str, float] = field(default_factory=dict)
    rejoin_s: float | None = None
    drains: dict[int, float | None] = field(default_factory=dict)
    backlog: list[Outcome] = field(default_factory=list)
    backlog_states: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    last_fault_end: float = 0.0


class Drill:
    """Sets up the hosts, runs the phases, and cleans up whatever happens."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan: Plan = args.plan
        self.prefix = netns.run_prefix()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.network: netns.Network | None = None
        self.processes: dict[str, HostProcess] = {}
        self.impairment: netns.Impairment | None = None
        self.load: Load | None = None
        self.balancer: Balancer | None = None
        self.password = secrets.token_hex(16)
        self.api_key = secrets.token_urlsafe(24)
        self.tracking_uri = ""
        self.results = Results()

    # set-up

    def env(self, **extra: str) -> dict[str, str]:
        """Return the environment of a program on a host: the drill's own, plus the stack's settings."""
        env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS_FILE", "PROMETHEUS_MULTIPROC_DIR")}
        assert self.network is not None
        redis_host = self.network.hosts["redis"].address
        env.update(
            CELERY_BROKER_URL=f"redis://:{self.password}@{redis_host}:{REDIS_PORT}/0",
            CELERY_RESULT_BACKEND=f"redis://:{self.password}@{redis_host}:{REDIS_PORT}/1",
            MLFLOW_TRACKING_URI=self.tracking_uri,
            PYTHONPATH=str(ROOT),
            LOGLEVEL="WARNING",
            VISIBILITY_TIMEOUT_SECONDS=str(self.plan.visibility_timeout_s),
            IRIS_QUEUE=QUEUE,
            **{netns.RUN_ENV: self.prefix},
            **extra,
        )
        return env

    def setup(self) -> None:
        swept = netns.sweep_leftovers()
        if swept:
            say(f"removed what earlier drills left behind: {', '.join(swept)}")
        training = None
        if self.args.tracking_uri:
            self.tracking_uri = self.args.tracking_uri
        else:
            home = self.tmp / "mlflow"
            home.mkdir()
            self.tracking_uri = f"sqlite:///{home}/mlruns.db"
            say(f"training a champion into {self.tracking_uri}")
            with (self.tmp / "training.log").open("wb") as log:
                training = subprocess.Popen(
                    [sys.executable, "-m", "training", "--quiet"], cwd=home, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri, "PYTHONPATH": str(ROOT),
                         netns.RUN_ENV: self.prefix}, start_new_session=True)
        octet = netns.pick_octet(netns.ip("-4", "route", "show"), os.getpid() % 200 + 20)
        self.network = netns.Network(self.prefix, octet)
        say(f"creating the hosts on {self.network.subnet}.0/24 (names {self.prefix}*)")
        self.network.create()
        hosts = {name: self.network.add_host(name) for name in ("redis", "api1", "api2", "worker1", "worker2")}
        self.start_redis(hosts["redis"])
        if training is not None and training.wait(600) != 0:
            raise DrillError(f"training failed:\n{(self.tmp / 'training.log').read_text(errors='replace')}")
        for n in (1, 2):
            self.processes[f"api{n}"] = self.api_process(n, hosts[f"api{n}"])
        for n in (1, 2):
            self.processes[f"worker{n}"] = self.worker_process(n, hosts[f"worker{n}"])
        for process in self.processes.values():
            if process.name != "redis":
                process.start()
        self.wait_for("both workers to load the model", lambda: all(
            scrape_processed(self.metrics_url(n)) is not None for n in (1, 2)), 180)
        self.wait_for("both API hosts' /readyz", lambda: all(
            http_ok(f"http://{hosts[f'api{n}'].address}:{API_PORT}/readyz") for n in (1, 2)), 60)
        say("hosts up: " + ", ".join(f"{h.name} {h.address} ({h.namespace})" for h in hosts.values()))

    def start_redis(self, host: netns.Host) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise DrillError("redis-server is not installed (apt-get install redis-server)")
        data = self.tmp / "redis"
        data.mkdir()
        argv = [server, "--bind", host.address, "--port", str(REDIS_PORT), "--requirepass", self.password,
                "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.processes["redis"] = process = HostProcess("redis", host, argv, self.env(), self.tmp / "redis.log")
        process.start()
        client = self.results_client()
        self.wait_for("Redis", lambda: _pings(client), 20)

    def api_process(self, n: int, host: netns.Host) -> HostProcess:
        metrics = self.tmp / f"api{n}-metrics"
        env = self.env(API_HOST=host.address, PORT=str(API_PORT), WEB_CONCURRENCY="1", WEB_THREADS="32",
                       API_KEYS=self.api_key, PROMETHEUS_MULTIPROC_DIR=str(metrics),
                       # Admission would refuse the backlog (QUEUE_MAX_LENGTH defaults to 10,000 messages).
                       QUEUE_MAX_LENGTH=str(self.plan.backlog + 10_000), QUEUE_MAX_MB="0")
        return HostProcess(f"api{n}", host, [sys.executable, "-m", "api"], env, self.tmp / f"api{n}.log")

    def worker_process(self, n: int, host: netns.Host) -> HostProcess:
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--without-gossip", "--without-mingle",
                "-n", f"w{n}@{host.namespace}", "-l", "warning"]
        env = self.env(WORKER_POOL="solo", WORKER_METRICS_PORT=str(WORKER_METRICS_PORT))
        return HostProcess(f"worker{n}", host, argv, env, self.tmp / f"worker{n}.log", supervise=True)

    def results_client(self, db: int = 1) -> redis.Redis:
        """Return a client of the Redis host's result backend (db 1), or of its broker (db 0)."""
        assert self.network is not None
        return redis.Redis(host=self.network.hosts["redis"].address, port=REDIS_PORT, password=self.password, db=db,
                           socket_connect_timeout=2, socket_timeout=10)

    def metrics_url(self, n: int) -> str:
        assert self.network is not None
        return f"http://{self.network.hosts[f'worker{n}'].address}:{WORKER_METRICS_PORT}/metrics"

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        say(f"waiting for {what}")
        deadline = time.monotonic() + timeout
        while not check():
            for process in self.processes.values():
                if process.proc is not None and not process.supervise and process.proc.poll() is not None \
                        and process.spawns == 1 and process.name not in self.results.killed_at:
                    raise DrillError(f"{process.name} exited with status {process.proc.returncode}:\n"
                                     f"{process.tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.processes.values())
                raise DrillError(f"{what}: not within {timeout:.0f} s\n{tails}")
            time.sleep(0.25)

    # phases

    def run(self) -> tuple[Summary, bool]:
        self.setup()
        assert self.network is not None
        plan = self.plan
        self.balancer = Balancer({n: self.network.hosts[n].address for n in ("api1", "api2")})
        # A sync request waits SYNC_TIMEOUT_SECONDS (10 s) at most; a client waiting twice that has met a wedge.
        self.load = load = Load(self.balancer, self.api_key, self.args.threads, self.args.rate, read_timeout=20,
                                max_requests=int(self.args.rate * 3600))
        say(f"load: {self.args.rate:g} requests/s, sync and async in turn, round-robin to api1 and api2, "
            f"{self.args.threads} threads; warm-up {plan.warmup_s:g} s")
        load.start()
        time.sleep(plan.warmup_s)
        self.phase_cut()
        self.phase_kill_api()
        self.phase_bad_link()
        load.stop()
        self.phase_drains()
        return self.finish()

    def phase_cut(self) -> None:
        assert self.load is not None and self.network is not None
        worker2 = self.network.hosts["worker2"]
        with contextlib.closing(self.results_client(db=0)) as broker:
            waiting = any(c.get("addr", "").startswith(f"{worker2.address}:") and c.get("cmd") == "brpop"
                          and "b" in c.get("flags", "") for c in broker.client_list())
        self.load.phase = "cut"
        netns.cut(worker2)
        say(f"cut worker2's cable ({worker2.port} down) for {self.plan.cut_s:g} s under load; its BRPOP was "
            f"{'waiting' if waiting else 'not waiting'} in Redis a moment before (Redis hands a waiting BRPOP the "
            f"next message, which a cut worker cannot read: the ledger brings it back)")
        time.sleep(self.plan.cut_s)
        netns.restore(worker2)
        restored = self.results.last_fault_end = time.monotonic()
        self.load.phase = "rejoin"
        say("worker2's cable is back; waiting for worker2 to consume again")
        process = self.processes["worker2"]
        spawns = process.spawns
        baseline: float | None = None
        while (waited := time.monotonic() - restored) < 2 * REJOIN_LIMIT_S:
            count = scrape_processed(self.metrics_url(2))
            if count is not None:
                if process.spawns != spawns:  # replaced by its supervisor: the new process starts from 0
                    baseline, spawns = 0.0, process.spawns
                if baseline is None:
                    baseline = count
                elif count > baseline:
                    self.results.rejoin_s = waited
                    break
            time.sleep(0.2)
        if self.results.rejoin_s is None:
            self.results.problems.append(f"worker2 did not consume within {2 * REJOIN_LIMIT_S:.0f} s of its "
                                         "cable coming back")
            say(self.results.problems[-1])
        else:
            replaced = f", after {len(process.exits)} restart(s)" if process.exits else ""
            say(f"worker2 consumes again {self.results.rejoin_s:.1f} s after its cable came back{replaced}")
            if self.results.rejoin_s > REJOIN_LIMIT_S:
                self.results.problems.append(f"worker2 took {self.results.rejoin_s:.1f} s to consume again "
                                             f"(limit {REJOIN_LIMIT_S:.0f} s)")
        self.load.phase = "settle"
        time.sleep(2)

    def phase_kill_api(self) -> None:
        assert self.load is not None
        self.load.phase = "api-kill"
        time.sleep(2)
        say("killing api1's processes (SIGKILL to its process group) under load")
        self.processes["api1"].kill()
        self.results.killed_at["api1"] = time.monotonic()
        time.sleep(self.plan.after_kill_s)

    def phase_bad_link(self) -> None:
        assert self.load is not None and self.network is not None
        worker1 = self.network.hosts["worker1"]
        self.load.phase = "bad-link"
        before = scrape_tasks(self.metrics_url(1))
        self.impairment = netns.impair(self.network, worker1, DELAY_MS, LOSS_PCT,
                                       self.env(), self.tmp / "relay.log")
        started = time.monotonic()
        say(f"bad link on worker1: {DELAY_MS:g} ms delay and {LOSS_PCT:g}% loss each way, with "
            f"{self.impairment.method}, for {self.plan.netem_s:g} s under load")
        time.sleep(self.plan.netem_s / 2)
        scrape_started = time.monotonic()
        # A lost SYN is sent again after 1 s, then 3 s: a generous timeout, so that the scrape is timed, not dropped.
        scrape_s = None if scrape_tasks(self.metrics_url(1), timeout=10) is None else time.monotonic() - scrape_started
        if scrape_s is not None:
            say(f"bad link: a scrape of worker1's metrics took {scrape_s:.2f} s (a connect and a request: two round "
                f"trips of {2 * DELAY_MS:g} ms or more)")
        time.sleep(max(0.0, started + self.plan.netem_s - time.monotonic()))
        after = scrape_tasks(self.metrics_url(1), timeout=10)
        self.impairment.stop()
        self.impairment = None
        ended = self.results.last_fault_end = time.monotonic()
        self.load.phase = "after"
        time.sleep(2)
        ran = None if before is None or after is None else {t: n - before.get(t, 0.0) for t, n in after.items()}
        self.results.problems += judge_bad_link([o for o in self.load.outcomes if o.phase == "bad-link"], started,
                                                ended, ran, scrape_s)

    def phase_drains(self) -> None:
        for n in (1, 2):
            self.processes[f"worker{n}"].stop()
        say("workers stopped; bringing api1 back for the backlog")
        self.processes["api1"].start()
        assert self.balancer is not None
        self.wait_for("api1 back in the rotation", lambda: self.balancer is not None and "api1" in self.balancer.up, 60)
        for workers in (1, 2):
            self.drain(workers)
            if workers == 1:
                self.processes["worker1"].stop()

    def drain(self, workers: int) -> None:
        assert self.balancer is not None
        backlog = self.plan.backlog
        say(f"queueing {backlog} async tasks through both API hosts, no worker running")
        queued_at = time.monotonic()
        outcomes = burst(self.balancer, self.api_key, backlog, threads=16, phase=f"backlog-{workers}")
        self.results.backlog += outcomes
        ids = [o.task_id for o in outcomes if verdict(o, {}) is Verdict.ACCEPTED and o.task_id]
        say(f"queued {len(ids)} of {backlog} in {time.monotonic() - queued_at:.1f} s; starting {workers} worker "
            f"host(s)")
        started = time.monotonic()
        for n in range(1, workers + 1):
            self.processes[f"worker{n}"].start()
        ready = None
        results, broker = self.results_client(), self.results_client(db=0)
        pending = list(ids)
        deadline = started + 900
        while pending and time.monotonic() < deadline:
            if ready is None and any(scrape_processed(self.metrics_url(n)) is not None for n in range(1, workers + 1)):
                ready = time.monotonic()
                say(f"a worker is ready {ready - started:.1f} s after the start; draining")
            # Reading 20,000 results takes CPU from the drain being timed: only once the queue is empty.
            if broker.llen(QUEUE) == 0:
                states = stored_states(results, pending)
                self.results.backlog_states.update(states)
                pending = [task_id for task_id in pending if states[task_id] != "SUCCESS"]
            if pending:
                time.sleep(0.1)
        results.close()
        broker.close()
        if pending or ready is None:
            self.results.drains[workers] = None
            say(f"drain with {workers} worker(s): {len(pending)} of {len(ids)} not done within 900 s")
        else:
            self.results.drains[workers] = drained = time.monotonic() - ready
            say(f"drain with {workers} worker(s): {len(ids)} tasks in {drained:.1f} s from the first worker ready "
                f"({len(ids) / drained:.0f}/s; {time.monotonic() - started:.1f} s from the start)")

    def finish(self) -> tuple[Summary, bool]:
        assert self.load is not None and self.balancer is not None
        killed_at = self.results.killed_at
        load_outcomes = self.load.outcomes
        for phase in ("warm-up", "cut", "rejoin", "settle", "api-kill", "bad-link", "after"):
            chosen = [o for o in load_outcomes if o.phase == phase]
            if chosen:
                say(phase_report(phase, chosen, killed_at))
        urls = {o.task_id: o.poll_url for o in load_outcomes
                if verdict(o, killed_at) is Verdict.ACCEPTED and o.task_id and o.poll_url}
        deadline = max(time.monotonic() + 60, self.results.last_fault_end + self.plan.visibility_timeout_s + 40)
        say(f"polling {len(urls)} accepted tasks of the load through the API until SUCCESS "
            f"(up to {deadline - time.monotonic():.0f} s)")
        final = poll_tasks(self.balancer, self.api_key, urls, deadline)
        final.update(self.results.backlog_states)
        every = [*load_outcomes, *self.results.backlog]
        counted = tally(every, killed_at, final)
        restored = sum(int(m.group(1)) for log in self.tmp.glob("worker*.log")
                       for m in RESTORED.finditer(log.read_text(errors="replace")))
        say(f"ledger: the workers restored {restored} task(s) Redis had popped for a worker that never received "
            "them (shared/transport/ledger.py)")
        by_id = {o.task_id: o for o in every if o.task_id}
        if counted.lost:
            by_phase = Counter(by_id[task_id].phase for task_id in counted.lost_ids)
            say(f"lost {counted.lost} accepted task(s), by the phase they were accepted in: {dict(by_phase)}")
        for task_id in counted.lost_ids[:20]:
            o = by_id[task_id]
            say(f"lost: task {task_id} ({o.kind}, {o.status} from {o.host} at +{o.ended - _start:.1f} s in phase "
                f"{o.phase}); last state {final.get(task_id)}")
        for o in [o for o in every if verdict(o, killed_at) is Verdict.FAILED][:20]:
            say(f"failed: {o.kind} to {o.host} at +{o.started - _start:.1f} s in phase {o.phase}: "
                f"{o.status or o.error}")
        restarts = {name: p.exits for name, p in self.processes.items() if p.exits}
        say(f"answered {counted.answered}, accepted {counted.accepted}, in flight on a killed host "
            f"{counted.in_flight}, failed {counted.failed}, lost {counted.lost}; worker restarts: {restarts or 'none'}")
        for problem in self.results.problems:
            say(f"problem: {problem}")
        assert self.network is not None
        summary = Summary(len(self.network.hosts), counted.requests, counted.failed, counted.lost,
                          self.results.rejoin_s, self.results.drains.get(1), self.results.drains.get(2))
        ok = not (counted.failed or counted.lost or self.results.problems)
        return summary, ok

    # clean-up

    def cleanup(self) -> None:
        """Stop everything the run started and remove every namespace, link and file it made."""
        if self.load is not None:
            self.load.halt()
        if self.balancer is not None:
            self.balancer.close()
        if self.impairment is not None:
            with contextlib.suppress(netns.NetnsError, OSError, subprocess.SubprocessError):
                self.impairment.stop()
        for process in self.processes.values():
            process.abandon()
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            process.stop(max(0.1, deadline - time.monotonic()))
        left = netns.destroy(self.prefix)
        if left:
            say(f"could not remove: {', '.join(left)}")
        if self.args.keep_logs is not None:
            self.args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in self.tmp.glob("*.log"):
                shutil.copy2(log, self.args.keep_logs / log.name)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if not left:
            say("cleaned up: no namespace, link, process or file of this run is left")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = netns.unusable_reason()
    if reason is not None:
        print(f"drill-hosts: cannot run here: {reason}", file=sys.stderr)
        return 2

    def interrupted(signum: int, _: Any) -> None:
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    drill = Drill(args)
    say(f"run {drill.prefix}: {args.plan}")
    result: tuple[Summary, bool] | None = None
    status = 2
    try:
        result = drill.run()
    except Interrupted as exc:
        say(f"{exc}: stopping and cleaning up")
        status = 128 + exc.signum
    except (DrillError, netns.NetnsError) as exc:
        say(f"the drill could not run: {exc}")
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        drill.cleanup()
    if result is None:
        return status
    summary, ok = result
    print(summary.line(), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
