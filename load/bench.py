"""Benchmark a running stack: sync throughput and latency by connections, async latency, batch rows/s.

Run against `make up` with `make bench` (or `.venv/bin/python load/bench.py --url http://127.0.0.1:9191`).
Sync and batch load come from wrk; async submit-to-result latency from a polling client. It prints a
table and writes a JSON report and a PNG plot (throughput and p99 against connections) under
load/reports/. It also reports the API processes' memory and whether they map scikit-learn, pandas or
SciPy (read from /proc, so Linux only).
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sync = report["sync"]
    conns = [row["connections"] for row in sync]
    fig, left = plt.subplots(figsize=(8, 4.5))
    left.plot(conns, [row["rps"] for row in sync], "o-", color="tab:blue", label="req/s")
    left.set_xlabel("connections")
    left.set_ylabel("requests per second", color="tab:blue")
    left.set_xscale("log", base=2)
    left.set_xticks(conns, [str(c) for c in conns])
    right = left.twinx()
    right.plot(conns, [row["p99_ms"] for row in sync], "s--", color="tab:red", label="p99 ms")
    right.set_ylabel("p99 latency (ms)", color="tab:red")
    left.set_title(f"POST /v1/classify on {report['machine']}")
    left.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9191")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--connections", default="1,8,32")
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
                              "sync": []}
    for connections in map(int, args.connections.split(",")):
        say(f"sync POST /v1/classify, {connections} connections, {args.seconds} s")
        report["sync"].append({"connections": connections,
                               **wrk(f"{base}/v1/classify", FLOWER, connections, args.seconds)})
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

    print(f"\n{'sync POST /v1/classify':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for row in report["sync"]:
        print(f"{str(row['connections']) + ' connections':<28}{row['rps']:>10.0f}{row['p50_ms']:>10.1f}"
              f"{row['p99_ms']:>10.1f}{row['errors']:>8}")
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
