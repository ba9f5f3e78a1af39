"""Benchmark a running stack: a sweep of sync load against the seed's design, async latency, batch rows/s.

Run against `make up` with `make bench` (or `.venv/bin/python load/bench.py --url http://127.0.0.1:9191`).
The sweep loads POST /v1/classify with wrk at 1, 8, 32 and 128 connections, and at each count the seed's
in-process design too (its yardstick server, load/seed_baseline.py, started here under gunicorn with the same
model), alternating the two for ``--rounds`` rounds and taking medians. Async submit-to-result
latency comes from a polling client, batch rows/s from wrk. It prints the tables and writes a JSON report and a
PNG plot (req/s, p50 and p99 against connections, for both) under load/reports/. It also reports the API
processes' memory and whether they map scikit-learn, pandas or SciPy (read from /proc, so Linux only).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from load.processes import stop_group

FLOWER = {"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}
HEAVY = ("sklearn", "pandas", "scipy")


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def to_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, body: dict[str, Any], connections: int, seconds: int) -> dict[str, float]:
    """Load ``url`` with wrk and return req/s, p50, p99 and the error count."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = [[{json.dumps(body)}]]\n')
        script.write('wrk.headers["Content-Type"] = "application/json"\n')
    try:
        out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency",
                              "-s", script.name, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99_ms": to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
    }


SEED_APP = Path(__file__).resolve().with_name("seed_baseline.py")
SEED_PORT = 9290


class SeedServer:
    """The seed's in-process design (model in the web process), on gunicorn as side_by_side.py runs it."""

    def __init__(self, app: Path, port: int = SEED_PORT) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": _absolute_sqlite(os.environ.get("MLFLOW_TRACKING_URI",
                                                                                   "sqlite:///mlruns.db"))}
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.proc = subprocess.Popen([str(gunicorn), "--chdir", str(app.parent), "-b", f"127.0.0.1:{port}", "-w", "2",
                                      "--threads", "2", "--preload", f"{app.stem}:create_app()"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                request(f"{self.url}/v1/classify", FLOWER)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the seed's design did not start from {app}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        stop_group(self.proc, 15)


def _absolute_sqlite(uri: str) -> str:
    """The seed server runs from its own folder: give a relative sqlite store an absolute path."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def sweep(servers: dict[str, str], connections: list[int], seconds: int, rounds: int) -> list[dict[str, Any]]:
    """Load each server's /v1/classify at each connection count, alternating servers; return medians per pair."""
    rows = []
    for count in connections:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for url in servers.values():  # warm up each at this concurrency, not counted
            wrk(f"{url}/v1/classify", FLOWER, count, 2)
        for round_ in range(rounds):
            order = list(servers.items()) if round_ % 2 == 0 else list(servers.items())[::-1]
            for name, url in order:
                say(f"sweep: {name}, {count} connections, round {round_ + 1} of {rounds}")
                runs[name].append(wrk(f"{url}/v1/classify", FLOWER, count, seconds))
        for name, results in runs.items():
            rows.append({"server": name, "connections": count,
                         **{key: statistics.median(r[key] for r in results) for key in ("rps", "p50_ms", "p99_ms")},
                         "errors": sum(r["errors"] for r in results)})
    return rows


def request(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def async_latency(base: str, count: int) -> dict[str, float]:
    """Submit ``count`` async requests one after another and time each from submit to SUCCESS."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        status, body = request(f"{base}/v1/classify/async", FLOWER)
        assert status == 202, body
        url = base + body["data"]["status_url"]
        while request(url)[1]["data"]["status"] not in ("SUCCESS", "FAILURE"):
            time.sleep(0.002)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {"count": count, "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


def api_processes(port: int) -> list[dict[str, Any]]:
    """Find the processes serving ``port`` and report their RSS and whether they map heavy libraries."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            if not any(f"socket:[{inode}]" in fds for inode in inodes):
                continue
            maps = Path(f"/proc/{pid}/maps").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))  # type: ignore[union-attr]
            found.append({"pid": int(pid), "rss_mb": round(rss / 1024, 1),
                          "maps_heavy": sorted(lib for lib in HEAVY if f"/{lib}/" in maps)})
        except (OSError, AttributeError):
            continue
    return found


def worker_readiness(timeout: float = 60) -> float:
    """Start one more worker (same settings, its own queue) and time it from spawn to answering with a warm model."""
    import uuid

    from shared import tasks
    from shared.celery_app import create_celery
    from shared.settings import get_settings

    app = create_celery(get_settings())
    name = f"readiness-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", name, "-n", f"{name}@%h",
                             "--without-gossip", "--without-mingle", "-l", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"the probe worker exited with {proc.returncode}")
            hosts = [f"{name}@{os.uname().nodename}"]
            if app.control.broadcast(tasks.MODEL_INFO_COMMAND, reply=True, timeout=0.05, destination=hosts):
                return time.perf_counter() - started
        raise RuntimeError(f"the probe worker was not ready within {timeout} s")
    finally:
        proc.terminate()
        proc.wait(30)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(name)
        app.close()


def plot(report: dict[str, Any], path: Path) -> None:
    """Draw req/s, and p50 and p99 latency, against connections for each server of the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = {"this stack": "tab:blue", "seed's design": "tab:orange"}
    conns = sorted({row["connections"] for row in report["sweep"]})
    for name in dict.fromkeys(row["server"] for row in report["sweep"]):
        rows = [row for row in report["sweep"] if row["server"] == name]
        counts = [row["connections"] for row in rows]
        colour = colours.get(name, "tab:gray")
        left.plot(counts, [row["rps"] for row in rows], "o-", color=colour, label=name)
        right.plot(counts, [row["p50_ms"] for row in rows], "o-", color=colour, label=f"{name} p50")
        right.plot(counts, [row["p99_ms"] for row in rows], "s--", color=colour, label=f"{name} p99")
    for axis, label in ((left, "requests per second"), (right, "latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(conns, [str(c) for c in conns])
        axis.set_xlabel("connections")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    right.set_yscale("log")
    fig.suptitle(f"POST /v1/classify by connections, {report['machine']} (medians of {report['rounds']} rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9191")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--connections", default="1,8,32,128")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server and connection count")
    parser.add_argument("--seed-app", type=Path, default=SEED_APP,
                        help="the seed's design to compare with (skipped when the file is missing)")
    parser.add_argument("--async-count", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--reports", default="load/reports")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk (macOS: brew install wrk)")
    base = args.url.rstrip("/")
    try:
        request(f"{base}/readyz")
    except OSError as exc:
        sys.exit(f"the stack does not answer {base}/readyz ({exc}): run `make up` first")

    report: dict[str, Any] = {"url": base, "machine": f"{os.cpu_count()} cores", "when": time.strftime("%F %T"),
                              "rounds": args.rounds}
    servers = {"this stack": base}
    seed = None
    if args.seed_app.is_file():
        say(f"starting the seed's design from {args.seed_app} on port {SEED_PORT}")
        seed = SeedServer(args.seed_app)
        servers["seed's design"] = seed.url
    else:
        say(f"{args.seed_app} not found: the sweep measures this stack alone")
    try:
        report["sweep"] = sweep(servers, [int(c) for c in args.connections.split(",")], args.seconds, args.rounds)
    finally:
        if seed is not None:
            seed.stop()
    say(f"async submit-to-result latency, {args.async_count} requests")
    report["async"] = async_latency(base, args.async_count)
    say(f"batch: {args.batch_rows}-row requests from {args.batch_clients} clients, {args.seconds} s")
    batch = wrk(f"{base}/v1/classify/batch", {"instances": [FLOWER] * args.batch_rows}, args.batch_clients,
                args.seconds)
    report["batch"] = {**batch, "rows": args.batch_rows, "clients": args.batch_clients,
                       "rows_per_s": batch["rps"] * args.batch_rows}
    say("worker readiness: spawn one more worker and time it until it answers with a warm model")
    report["worker_ready_s"] = worker_readiness()
    report["api_processes"] = api_processes(urllib.parse.urlparse(base).port or 80)

    print(f"\n{'POST /v1/classify':<18}{'connections':>12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for row in report["sweep"]:
        print(f"{row['server']:<18}{row['connections']:>12}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}"
              f"{row['p99_ms']:>10.2f}{row['errors']:>8}")
    by = {(row["server"], row["connections"]): row for row in report["sweep"]}
    for count in sorted({row["connections"] for row in report["sweep"]}):
        ours, theirs = by.get(("this stack", count)), by.get(("seed's design", count))
        if ours and theirs:
            print(f"{count:>4} connections: {ours['rps'] / theirs['rps']:.2f}x the seed's req/s, "
                  f"p50 {ours['p50_ms'] - theirs['p50_ms']:+.2f} ms, p99 {ours['p99_ms'] - theirs['p99_ms']:+.2f} ms")
    a, b = report["async"], report["batch"]
    print(f"{'async submit-to-result':<28}{'':>10}{a['p50_ms']:>10.1f}{a['p99_ms']:>10.1f}")
    print(f"{'batch ' + str(b['rows']) + ' rows x ' + str(b['clients']) + ' clients':<28}{b['rps']:>10.1f}"
          f"{b['p50_ms']:>10.1f}{b['p99_ms']:>10.1f}{b['errors']:>8}   = {b['rows_per_s']:,.0f} rows/s")
    print(f"worker readiness (spawn to warm model answering): {report['worker_ready_s']:.2f} s")
    for proc in report["api_processes"]:
        print(f"API pid {proc['pid']}: RSS {proc['rss_mb']} MB, maps {', '.join(proc['maps_heavy']) or 'none of'} "
              f"{'/'.join(HEAVY)}")

    reports = Path(args.reports)
    reports.mkdir(parents=True, exist_ok=True)
    stem = reports / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, stem.with_suffix(".png"))
    print(f"\nreport: {stem}.json  plot: {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
