"""Plot a Locust run and print its summary line, from the CSV files that ``locust --csv PREFIX`` writes.

    python load/plot_locust.py load/reports/locust-20250101-120000          # writes PREFIX.png
    python load/plot_locust.py PREFIX --output figure.png --title "32 users"

The figure has throughput (requests/s, failures/s) and the p50/p95/p99 latency over time, from
PREFIX_stats_history.csv (Locust's percentiles there cover a rolling 10-second window), with the user count.
The summary line comes from PREFIX_stats.csv's Aggregated row (the whole run).
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

PERCENTILES = ("50%", "95%", "99%")


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def read_history(prefix: Path) -> list[dict[str, str]]:
    """Return the Aggregated rows of PREFIX_stats_history.csv in time order."""
    path = Path(f"{prefix}_stats_history.csv")
    with path.open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("Name") == "Aggregated"]
    if not rows:
        raise SystemExit(f"{path} has no Aggregated rows: did the run send any request?")
    return sorted(rows, key=lambda row: float(row["Timestamp"]))


def read_totals(prefix: Path) -> dict[str, str]:
    """Return the Aggregated row of PREFIX_stats.csv."""
    path = Path(f"{prefix}_stats.csv")
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") == "Aggregated":
                return row
    raise SystemExit(f"{path} has no Aggregated row")


def summary(prefix: Path) -> str:
    """One line: requests, failures, throughput and latency percentiles of the whole run.

    From PREFIX_summary.json (exact final totals, written by load/locustfile.py at exit) when it exists, else
    from PREFIX_stats.csv's Aggregated row (which Locust rewrites each second, so it may lag by a second).
    """
    exact = Path(f"{prefix}_summary.json")
    if exact.exists():
        data = json.loads(exact.read_text())
        requests, failures, rps = int(data["requests"]), int(data["failures"]), float(data["requests_per_second"])
        latency = [data.get(f"p{p.rstrip('%')}") for p in PERCENTILES]
    else:
        row = read_totals(prefix)
        requests, failures = int(float(row["Request Count"])), int(float(row["Failure Count"]))
        rps = float(row["Requests/s"])
        latency = [_number(row.get(p)) for p in PERCENTILES]
    share = 100.0 * failures / requests if requests else 0.0
    text = ", ".join(f"p{p.rstrip('%')} {'N/A' if v is None else f'{v:.0f}'} ms"
                     for p, v in zip(PERCENTILES, latency, strict=True))
    return f"load summary: {requests} requests, {failures} failures ({share:.2f}%), {rps:.1f} req/s, {text}"


def plot(prefix: Path, output: Path, title: str | None = None) -> Path:
    """Draw throughput and latency over time and save the figure as a PNG."""
    rows = read_history(prefix)
    start = float(rows[0]["Timestamp"])
    seconds = [float(row["Timestamp"]) - start for row in rows]

    fig = Figure(figsize=(10, 7), layout="constrained")
    rps_ax, lat_ax = fig.subplots(2, 1, sharex=True)

    rps_ax.plot(seconds, [_number(r["Requests/s"]) or 0.0 for r in rows], label="requests/s (rolling)",
                color="tab:blue")
    rps_ax.plot(seconds, [_number(r["Failures/s"]) or 0.0 for r in rows], label="failures/s", color="tab:red")
    rps_ax.set_ylabel("requests per second")
    rps_ax.set_ylim(bottom=0)
    rps_ax.grid(alpha=0.3)
    users_ax = rps_ax.twinx()
    users_ax.step(seconds, [_number(r["User Count"]) or 0.0 for r in rows], where="post", color="tab:gray",
                  linestyle="--", label="users")
    users_ax.set_ylabel("users")
    users_ax.set_ylim(bottom=0)
    handles = rps_ax.get_legend_handles_labels()[0] + users_ax.get_legend_handles_labels()[0]
    rps_ax.legend(handles=handles, loc="lower right")
    rps_ax.set_title("Throughput")

    for percentile, colour in zip(PERCENTILES, ("tab:green", "tab:orange", "tab:purple"), strict=True):
        values = [_number(r.get(percentile)) for r in rows]
        lat_ax.plot(seconds, [v if v is not None else float("nan") for v in values], label=f"p{percentile[:-1]}",
                    color=colour)
    lat_ax.set_ylabel("response time (ms)")
    lat_ax.set_xlabel("seconds since the first sample")
    lat_ax.set_ylim(bottom=0)
    lat_ax.grid(alpha=0.3)
    lat_ax.legend(loc="upper left")
    lat_ax.set_title("Latency percentiles (rolling 10 s window)")

    fig.suptitle(f"{title or 'Locust run ' + prefix.name}\n{summary(prefix).removeprefix('load summary: ')}")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", type=Path, help="the --csv prefix of the Locust run")
    parser.add_argument("--output", type=Path, help="PNG to write (default: PREFIX.png)")
    parser.add_argument("--title", help="first line of the figure title (the summary follows)")
    args = parser.parse_args(argv)
    output = plot(args.prefix, args.output or Path(f"{args.prefix}.png"), args.title)
    print(f"plot: {output}")
    print(summary(args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
