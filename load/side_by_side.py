"""Load this stack's POST /v1/classify and the seed's design (load/seed_baseline.py) in alternating wrk rounds.

Start the stack first (``make up``), then ``make side-by-side`` (scripts/side-by-side.sh) or::

    .venv/bin/python -m load.side_by_side --connections 32 --rounds 3 --ours http://127.0.0.1:9191

The seed's design is started here on a free port, with the model the stack serves. For each connection count,
each server gets a short warm-up that is not counted, then ``--rounds`` rounds load each one for ``--duration``
seconds with the same body and headers (the stack's key as X-API-Key when one is set: --api-key, else API_KEY,
else the first of API_KEYS or API_KEYS_FILE). The server that goes first alternates from round to round, so
neither always runs on a machine the other has just warmed. A row is printed per run; the last lines, one per
connection count, are the figures, medians over the rounds::

    side-by-side connections=32 ratio=1.95 ours_rps=4242 seed_rps=2170 ours_p99_ms=16.5 seed_p99_ms=31.0 ...

``ratio`` is our req/s over the seed's. A JSON report of every run goes to load/reports/. The exit status is 1
when the stack answered any request with an error, or fell short of --min-ratio or --max-p99-ms at any count.
``--with-mlflow-serve`` loads ``mlflow models serve`` of the same model as a third server. Needs wrk.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from load.processes import stop_group

ROOT = Path(__file__).resolve().parents[1]
# The seed README's example request: the same body for every server.
BODY = {"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}
OURS, SEED, MLFLOW_SERVE = "ours", "seed", "mlflow-serve"
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


@dataclass(frozen=True)
class Run:
    """One wrk run's figures."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class Target:
    """A server to load: where to POST, what body, and which headers."""

    name: str
    url: str
    body: Mapping[str, Any]
    headers: Mapping[str, str]


def to_ms(text: str) -> float:
    """Convert one of wrk's durations (``512.00us``, ``1.25ms``, ``1.02s``, ``2.00m``) to milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Run:
    """Read req/s, p50, p99 and errors (non-2xx answers plus socket errors) from ``wrk --latency``'s output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rps is None or p50 is None or p99 is None:
        raise ValueError("wrk printed no Requests/sec and latency distribution (was --latency given?)")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sockets:
        errors += sum(int(count) for count in sockets.groups())
    return Run(float(rps.group(1)), to_ms(p50.group(1)), to_ms(p99.group(1)), errors)


def lua_script(body: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    """Return a wrk script that POSTs ``body`` as JSON with ``headers``."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [==[{json.dumps(body)}]==]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items()]
    return "\n".join(lines) + "\n"


def parse_connections(values: Sequence[str]) -> list[int]:
    """Read connection counts given as ``1,8,32`` or ``1 8 32`` (or both), in order, without repeats."""
    counts: list[int] = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            count = int(item)
            if count < 1:
                raise ValueError(f"a connection count must be at least 1, not {count}")
            if count not in counts:
                counts.append(count)
    if not counts:
        raise ValueError("no connection count given")
    return counts


def schedule(names: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """Return (round, server) in run order: every server once a round, the first one alternating by round."""
    order = []
    for round_ in range(1, rounds + 1):
        ordered = names if round_ % 2 else list(reversed(names))
        order += [(round_, name) for name in ordered]
    return order


def medians(runs: Sequence[Run]) -> Run:
    """Return the median of each figure over ``runs``; errors are summed, since any one counts."""
    return Run(
        statistics.median(run.rps for run in runs),
        statistics.median(run.p50_ms for run in runs),
        statistics.median(run.p99_ms for run in runs),
        sum(run.errors for run in runs),
    )


def side_by_side_line(connections: int, rounds: int, ours: Run, seed: Run, mlflow_serve: Run | None = None) -> str:
    """Format the summary line of one connection count: both servers' medians and their req/s ratio."""
    line = (
        f"side-by-side connections={connections} ratio={ours.rps / seed.rps:.2f} ours_rps={ours.rps:.0f} "
        f"seed_rps={seed.rps:.0f} ours_p99_ms={ours.p99_ms:.1f} seed_p99_ms={seed.p99_ms:.1f} "
        f"ours_errors={ours.errors} seed_errors={seed.errors}"
    )
    if mlflow_serve is not None:
        line += f" mlflow_serve_rps={mlflow_serve.rps:.0f} vs_mlflow_serve={ours.rps / mlflow_serve.rps:.2f}"
    return f"{line} rounds={rounds}"


def falls_short(pairs: Sequence[tuple[Run, Run]], min_ratio: float | None, max_p99_ms: float | None) -> bool:
    """Say whether, at any count, our stack had errors, a req/s ratio below ``min_ratio`` or a p99 above the bound."""
    for ours, seed in pairs:
        if ours.errors or (min_ratio is not None and ours.rps / seed.rps < min_ratio):
            return True
        if max_p99_ms is not None and ours.p99_ms > max_p99_ms:
            return True
    return False


def run_row(connections: int, round_: int | str, name: str, run: Run) -> str:
    """Format one run as a row of the per-round table."""
    return (
        f"{connections:>11}  {round_!s:>6}  {name:<13}{run.rps:>9.0f}{run.p50_ms:>9.2f}{run.p99_ms:>9.2f}"
        f"{run.errors:>8}"
    )


TABLE_HEADER = f"{'connections':>11}  {'round':>6}  {'server':<13}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"


def api_key(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """Return the key to send: ``explicit``, else API_KEY (as Locust reads it), else the stack's first key."""
    if explicit:
        return explicit
    if env.get("API_KEY"):
        return env["API_KEY"]
    text = env.get("API_KEYS") or ""
    if not text and env.get("API_KEYS_FILE"):
        text = Path(env["API_KEYS_FILE"]).read_text()
    keys = [key.strip() for line in text.splitlines() for key in line.split(",") if key.strip()]
    return keys[0] if keys else None


def classify_base(url: str) -> str:
    """Return the stack's base URL from ``url``, which may also name /v1/classify (as the old --target did)."""
    url = url.rstrip("/")
    return url.removesuffix("/v1/classify")


def free_port() -> int:
    """Return a TCP port that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(target: Target, timeout: float = 5.0) -> int:
    """POST the target's body once and return the HTTP status."""
    data = json.dumps(target.body).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    req = urllib.request.Request(target.url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wrk(target: Target, connections: int, seconds: int) -> Run:
    """Load ``target`` with wrk for ``seconds`` at ``connections`` and return its figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(target.body, target.headers))
    try:
        # Two threads at most: wrk shares the machine with both servers, and two keep up with either.
        argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name]
        done = subprocess.run([*argv, target.url], capture_output=True, text=True)
    finally:
        os.unlink(script.name)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed against {target.url}: {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


class Server:
    """A server process started here in its own session, its output kept in a file to show if it fails."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        # Closed in stop(): the file lives as long as the server, beyond any one block.
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{name}-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=dict(env), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, target: Target, seconds: float) -> None:
        """Wait until ``target`` answers 200, or raise with the end of the server's output."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                if post(target) == 200:
                    return
            time.sleep(0.5)
        self.log.seek(0)
        tail = "".join(self.log.readlines()[-15:])
        state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else f"not ready in {seconds:g} s"
        raise RuntimeError(f"{self.name} {state}:\n{tail}")

    def stop(self) -> None:
        """Stop the server and every process it started."""
        stop_group(self.proc, 15)
        self.log.close()


@contextlib.contextmanager
def servers(args: argparse.Namespace, ours: Target) -> Iterator[list[Target]]:
    """Start the seed's design (and mlflow models serve if asked) on free ports; yield every target, ours first."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db")
    # `mlflow models serve` starts uvicorn by name: the environment's bin folder goes first on PATH.
    env["PATH"] = f"{Path(args.python).parent}{os.pathsep}{env.get('PATH', '')}"
    targets = [ours]
    started: list[Server] = []
    try:
        port = free_port()
        seed = Target(SEED, f"http://127.0.0.1:{port}/v1/classify", BODY, ours.headers)
        options = f"--port {port} --workers {args.seed_workers} --threads {args.seed_threads}".split()
        started.append(Server(SEED, [args.python, "-m", "load.seed_baseline", *options], env))
        started[-1].wait_ready(seed, 120)
        targets.append(seed)
        if args.with_mlflow_serve:
            port = free_port()
            model = f"models:/{env.get('IRIS_MODEL_NAME', 'iris-classifier')}@{env.get('IRIS_MODEL_ALIAS', 'champion')}"
            serve = Target(MLFLOW_SERVE, f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [BODY]}, {})
            options = f"-m {model} --env-manager local -h 127.0.0.1 -p {port} -w {args.seed_workers}".split()
            started.append(Server(MLFLOW_SERVE, [args.python, "-m", "mlflow", "models", "serve", *options], env))
            started[-1].wait_ready(serve, 180)
            targets.append(serve)
        yield targets
    finally:
        for server in started:
            server.stop()


def compare(args: argparse.Namespace, ours: Target, runs: list[dict[str, Any]]) -> dict[int, dict[str, Run]]:
    """Load every server at each connection count in alternating rounds; append each run, return the medians."""
    middles: dict[int, dict[str, Run]] = {}
    with servers(args, ours) as targets:
        print(TABLE_HEADER, flush=True)
        named = {target.name: target for target in targets}
        for count in args.connections:
            for target in targets:
                wrk(target, count, args.warmup)
            by_name: dict[str, list[Run]] = {name: [] for name in named}
            for round_, name in schedule(list(named), args.rounds):
                run = wrk(named[name], count, args.duration)
                by_name[name].append(run)
                runs.append({"connections": count, "round": round_, "server": name, **asdict(run)})
                print(run_row(count, round_, name, run), flush=True)
            middles[count] = {name: medians(results) for name, results in by_name.items()}
            for name, run in middles[count].items():
                print(run_row(count, "median", name, run), flush=True)
    return middles


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m load.side_by_side", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--connections", nargs="+", default=["1,8,32"], help="connection counts, as 1,8,32 or 1 8 32 (default: 1,8,32)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per server and count (default: 2)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of uncounted load per server and count")
    parser.add_argument("--ours", default="http://127.0.0.1:9191", help="this stack's base URL")
    parser.add_argument(
        "--target",
        dest="ours",
        default=argparse.SUPPRESS,
        help="the old spelling of --ours; a /v1/classify URL is accepted",
    )
    default_python = ROOT / ".venv" / "bin" / "python"
    parser.add_argument(
        "--python",
        default=str(default_python) if default_python.exists() else sys.executable,
        help="the interpreter that runs the seed's design (Flask, gunicorn, MLflow, scikit-learn)",
    )
    parser.add_argument("--seed-workers", type=int, default=2, help="gunicorn workers of the seed's design")
    parser.add_argument("--seed-threads", type=int, default=2, help="threads per gunicorn worker, as the seed ran")
    parser.add_argument("--with-mlflow-serve", action="store_true", help="also load `mlflow models serve`")
    parser.add_argument("--api-key", help="the key to send as X-API-Key (default: API_KEY, API_KEYS, API_KEYS_FILE)")
    parser.add_argument("--min-ratio", type=float, help="exit 1 when our req/s over the seed's is below this")
    parser.add_argument("--max-p99-ms", type=float, help="exit 1 when our p99 is above this")
    parser.add_argument("--reports", type=Path, default=ROOT / "load" / "reports")
    args = parser.parse_args(argv)
    try:
        args.connections = parse_connections(args.connections)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the side-by-side comparison and return the exit status."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (macOS: brew install wrk)")
    key = api_key(args.api_key, os.environ)
    headers = {"X-API-Key": key} if key else {}
    ours = Target(OURS, f"{classify_base(args.ours)}/v1/classify", BODY, headers)
    try:
        status: int | str = post(ours)
    except OSError as exc:
        status = str(exc)
    if status == 401:
        sys.exit(f"{ours.url} wants an API key: set API_KEYS as the stack has it (or API_KEY, or --api-key)")
    if status != 200:
        sys.exit(f"this stack does not answer POST {ours.url} with 200 ({status}): start it with `make up` first")

    print(
        f"==> starting the seed's design (load/seed_baseline.py, {args.seed_workers} gunicorn workers x "
        f"{args.seed_threads} threads) with the stack's model",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    try:
        middles = compare(args, ours, runs)
    except RuntimeError as exc:  # a server that did not start or a wrk run that failed: its message, no traceback
        sys.exit(f"side-by-side: {exc}")

    lines = [
        side_by_side_line(count, args.rounds, middle[OURS], middle[SEED], middle.get(MLFLOW_SERVE))
        for count, middle in middles.items()
    ]
    summary = [
        {
            "connections": count,
            "ratio": middle[OURS].rps / middle[SEED].rps,
            **{name: asdict(run) for name, run in middle.items()},
        }
        for count, middle in middles.items()
    ]
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": os.cpu_count(),
        "ours": ours.url,
        "seed": {"workers": args.seed_workers, "threads": args.seed_threads},
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "runs": runs,
        "summary": summary,
        "lines": lines,
    }
    args.reports.mkdir(parents=True, exist_ok=True)
    path = args.reports / f"side-by-side-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {path}")
    print("\n".join(lines))

    return 1 if falls_short([(m[OURS], m[SEED]) for m in middles.values()], args.min_ratio, args.max_p99_ms) else 0


if __name__ == "__main__":
    sys.exit(main())
