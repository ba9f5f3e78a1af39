"""Plot a soak run: the RSS of every API and worker process over time, above Locust's throughput.

    python -m load.plot_soak load/reports/soak-20250101-120000 --warmup 2m      # writes RUN/soak.png
    python -m load.plot_soak RUN --warmup 2m --output docs/img/soak.png

The title carries load/soak_report.py's verdict. A dashed line marks the end of the warm-up.
"""

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

from load.soak_report import locust_prefix, parse_duration, read_samples, report

COLOURS = {"api": ("tab:blue", "tab:cyan", "tab:purple", "tab:gray"),
           "worker": ("tab:orange", "tab:red", "tab:brown", "tab:olive")}


def throughput(prefix: Path) -> list[tuple[float, float, float]]:
    """Return (unix time, requests/s, failures/s) from the Aggregated rows of PREFIX_stats_history.csv."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return sorted((float(r["Timestamp"]), float(r["Requests/s"] or 0), float(r["Failures/s"] or 0))
                      for r in csv.DictReader(fh) if r.get("Name") == "Aggregated")


def plot(run: Path, warmup: float, output: Path, limit: float = 10.0) -> Path:
    """Draw RSS per process and throughput over time and save the figure as a PNG."""
    samples = read_samples(run / "rss.csv")
    start = min(s.time for s in samples)
    series: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        series[(s.role, s.pid)].append((s.elapsed, s.rss_mb))

    fig = Figure(figsize=(10, 9), layout="constrained")
    rss_ax, change_ax, rps_ax = fig.subplots(3, 1, sharex=True, height_ratios=(2, 1.5, 1))
    used: dict[str, int] = defaultdict(int)
    for (role, pid), points in sorted(series.items()):
        colours = COLOURS.get(role, ("black",))
        colour, label = colours[used[role] % len(colours)], f"{role} {pid}"
        used[role] += 1
        rss_ax.plot(*zip(*points, strict=True), label=label, color=colour, marker=".")
        # Against the process's own RSS at the first sample after the warm-up, where the verdict starts.
        base = next((mb for t, mb in points if t >= warmup), None)
        if base:
            change_ax.plot([t for t, _ in points], [100.0 * (mb - base) / base for _, mb in points], label=label,
                           color=colour, marker=".")
    rss_ax.set_ylabel("RSS (MB)")
    rss_ax.set_ylim(bottom=0)
    rss_ax.grid(alpha=0.3)
    rss_ax.legend(loc="best", ncols=2)
    rss_ax.set_title("Resident memory per process")
    change_ax.axhline(limit, color="tab:red", linestyle=":", linewidth=1, label=f"limit +{limit:g}%")
    change_ax.set_ylabel("change (%)")
    change_ax.set_ylim(min(-limit, change_ax.get_ylim()[0]), max(1.5 * limit, change_ax.get_ylim()[1]))
    change_ax.grid(alpha=0.3)
    change_ax.set_title("RSS change against the end of the warm-up")

    rows = throughput(locust_prefix(run))
    if rows:
        seconds = [t - start for t, _, _ in rows]
        rps_ax.plot(seconds, [r for _, r, _ in rows], label="requests/s (rolling)", color="tab:blue")
        rps_ax.plot(seconds, [f for _, _, f in rows], label="failures/s", color="tab:red")
        rps_ax.legend(loc="lower right")
    rps_ax.set_ylabel("requests per second")
    rps_ax.set_ylim(bottom=0)
    rps_ax.set_xlabel("seconds since the soak started")
    rps_ax.grid(alpha=0.3)
    rps_ax.set_title("Locust throughput")
    for ax in (rss_ax, change_ax, rps_ax):
        ax.axvline(warmup, color="gray", linestyle="--", linewidth=1)
    rss_ax.annotate(" end of warm-up", (warmup, 0), xycoords=("data", "axes fraction"), va="bottom", color="gray")

    lines, _ = report(run, warmup, limit)
    fig.suptitle(lines[-1].removeprefix("soak: "))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the soak's report directory (rss.csv and locust-*)")
    parser.add_argument("--warmup", default="2m", help="time from the start not judged (default 2m)")
    parser.add_argument("--limit", type=float, default=10.0, help="largest RSS growth allowed, in %% (default 10)")
    parser.add_argument("--output", type=Path, help="PNG to write (default: RUN/soak.png)")
    args = parser.parse_args(argv)
    try:
        output = plot(args.run, parse_duration(args.warmup), args.output or args.run / "soak.png", args.limit)
    except (OSError, ValueError) as exc:
        print(f"plot: cannot draw {args.run}: {exc}", file=sys.stderr)
        return 2
    print(f"plot: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
