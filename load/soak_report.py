"""Judge a soak run: no failed request, and the API's and workers' RSS flat after the warm-up.

    python -m load.soak_report load/reports/soak-20250101-120000 --warmup 2m --limit 10

RUN is the directory scripts/soak.sh writes: rss.csv from load/rss.py and one Locust run (locust-*). Per role
it compares the summed RSS of the role's processes at the end of the warm-up with the RSS at the end of the
run, each the median of WINDOW samples (a single sample can catch a garbage-collection peak). Each process
that lived through both windows is compared on its own too, so one leaking process cannot hide in a total.
Processes that end or start during the run (a respawn) are listed. The last line is the verdict, such as
``soak: 0 failures in 245,000 requests; RSS api 92→93 MB (+1.1%), worker 160→161 MB (+0.6%): flat``.
Exits 1 when any request failed or any role or process grew by more than LIMIT percent, else 0.
"""

import argparse
import csv
import itertools
import json
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1, "": 1}


@dataclass(frozen=True)
class Sample:
    """One process's RSS at one sample time."""

    elapsed: float
    time: float
    role: str
    pid: int
    rss_mb: float


@dataclass(frozen=True)
class Growth:
    """RSS (MB) of a role or a process at the end of the warm-up and at the end of the run."""

    name: str
    start: float
    end: float

    @property
    def percent(self) -> float:
        return 100.0 * (self.end - self.start) / self.start if self.start else 0.0

    def __str__(self) -> str:
        return f"{self.name} {self.start:.0f}→{self.end:.0f} MB ({self.percent:+.1f}%)"


def parse_duration(text: str) -> float:
    """Read a duration in Locust's style (``90``, ``90s``, ``2m``, ``1h30m``) as seconds."""
    parts = DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 2m or 1h30m)")
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)


def read_samples(path: Path) -> list[Sample]:
    """Read the CSV file load/rss.py writes."""
    with path.open(newline="") as fh:
        return [Sample(float(r["elapsed_s"]), float(r["time"]), r["role"], int(r["pid"]), float(r["rss_mb"]))
                for r in csv.DictReader(fh)]


def windows(samples: list[Sample], warmup: float, window: int) -> tuple[list[float], list[float]]:
    """Return the sample times of the first WINDOW samples after the warm-up and of the last WINDOW."""
    after = sorted({s.elapsed for s in samples if s.elapsed >= warmup})
    if len(after) < 2:
        last = max((s.elapsed for s in samples), default=0.0)
        raise ValueError(f"fewer than 2 samples after the {warmup:g} s warm-up (the last is at {last:g} s): "
                         "run longer, sample more often or shorten the warm-up")
    size = max(1, min(window, len(after) // 2))  # the two windows never overlap
    return after[:size], after[-size:]


def role_growth(samples: list[Sample], warmup: float, window: int = 3) -> list[Growth]:
    """Compare each role's summed RSS at the end of the warm-up with the end of the run."""
    first, last = windows(samples, warmup, window)
    totals: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for s in samples:
        totals[s.role][s.elapsed] += s.rss_mb
    return [Growth(role, statistics.median(totals[role][t] for t in first),
                   statistics.median(totals[role][t] for t in last)) for role in sorted(totals)]


def process_growth(samples: list[Sample], warmup: float, window: int = 3) -> list[Growth]:
    """Compare each process present in every sample of both windows with itself."""
    first, last = windows(samples, warmup, window)
    rss: dict[tuple[str, int], dict[float, float]] = defaultdict(dict)
    for s in samples:
        rss[(s.role, s.pid)][s.elapsed] = s.rss_mb
    return [Growth(f"{role} {pid}", statistics.median(by_time[t] for t in first),
                   statistics.median(by_time[t] for t in last))
            for (role, pid), by_time in sorted(rss.items()) if all(t in by_time for t in first + last)]


def process_changes(samples: list[Sample]) -> list[str]:
    """Describe each process that ended or started between two samples (a crash, a respawn, a recycle)."""
    by_time: dict[float, set[tuple[str, int]]] = defaultdict(set)
    for s in samples:
        by_time[s.elapsed].add((s.role, s.pid))
    times = sorted(by_time)
    changes = []
    for before, after in itertools.pairwise(times):
        changes += [f"{role} pid {pid} ended between {before:g} s and {after:g} s"
                    for role, pid in sorted(by_time[before] - by_time[after])]
        changes += [f"{role} pid {pid} started between {before:g} s and {after:g} s"
                    for role, pid in sorted(by_time[after] - by_time[before])]
    return changes


def verdict(requests: int, failures: int, roles: list[Growth], processes: list[Growth], changes: list[str],
            limit: float) -> tuple[str, bool]:
    """Return the one-line verdict and whether the soak passed."""
    grew = [g for g in roles + processes if g.percent > limit]
    ok = failures == 0 and requests > 0 and not grew
    flat = f"grew more than {limit:g}%: {', '.join(g.name for g in grew)}" if grew else "flat"
    if changes:
        flat += f" ({len(changes)} process starts/ends, listed above)"
    return (f"soak: {failures:,} failures in {requests:,} requests; RSS {', '.join(map(str, roles))}: {flat}", ok)


def locust_prefix(run: Path) -> Path:
    """Return the --csv prefix of the Locust run in RUN."""
    stats = sorted(run.glob("locust-*_stats.csv"))
    if not stats:
        raise ValueError(f"no Locust run (locust-*_stats.csv) in {run}")
    return Path(str(stats[-1]).removesuffix("_stats.csv"))


def locust_totals(prefix: Path) -> tuple[int, int]:
    """Return (requests, failures) of a Locust run: exact from _summary.json, else _stats.csv's Aggregated row."""
    exact = Path(f"{prefix}_summary.json")
    if exact.exists():
        data = json.loads(exact.read_text())
        return int(data["requests"]), int(data["failures"])
    with Path(f"{prefix}_stats.csv").open(newline="") as fh:
        row = next((r for r in csv.DictReader(fh) if r.get("Name") == "Aggregated"), None)
    return (int(float(row["Request Count"])), int(float(row["Failure Count"]))) if row else (0, 0)


def report(run: Path, warmup: float, limit: float, window: int = 3) -> tuple[list[str], bool]:
    """Return the report's lines (the verdict last) and whether the soak passed."""
    samples = read_samples(run / "rss.csv")
    requests, failures = locust_totals(locust_prefix(run))
    roles, processes = role_growth(samples, warmup, window), process_growth(samples, warmup, window)
    changes = process_changes(samples)
    line, ok = verdict(requests, failures, roles, processes, changes, limit)
    return [f"soak: per process, end of warm-up ({warmup:g} s) vs end: {', '.join(map(str, processes))}",
            *(f"soak: {change}" for change in changes), line], ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the soak's report directory (rss.csv and locust-*)")
    parser.add_argument("--warmup", default="2m", help="time from the start not judged (default 2m)")
    parser.add_argument("--limit", type=float, default=10.0, help="largest RSS growth allowed, in %% (default 10)")
    parser.add_argument("--window", type=int, default=3, help="samples per median at each end (default 3)")
    args = parser.parse_args(argv)
    try:
        lines, ok = report(args.run, parse_duration(args.warmup), args.limit, args.window)
    except (OSError, ValueError) as exc:
        print(f"soak: cannot judge {args.run}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
