"""Sample the resident memory (RSS) of a running stack's API and worker processes into a CSV file.

    python -m load.rss --port 9191 --interval 10 --output load/reports/rss.csv    # until SIGINT or SIGTERM

The API is the process tree around whatever listens on --port (granian's main process and its workers).
The workers are the ``celery ... worker`` process trees on the API's broker (CELERY_BROKER_URL read from
the processes' environments, so another stack's workers on the same machine are left out). Processes are
found again at every sample, so a respawned process shows up as a pid that ends and a pid that starts.
Each sample writes one row per process: elapsed_s, time, role (api or worker), pid, rss_mb.
"""

import argparse
import csv
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import psutil

from load.soak_report import parse_duration
from shared.settings import Settings

FIELDS = ("elapsed_s", "time", "role", "pid", "rss_mb")
DEFAULT_BROKER = Settings.model_fields["celery_broker_url"].default


class Proc(NamedTuple):
    """What the sampler needs to know about one process."""

    pid: int
    ppid: int
    cmdline: tuple[str, ...]
    rss: int  # bytes


def is_celery_worker(cmdline: tuple[str, ...]) -> bool:
    """Tell whether a command line runs ``celery ... worker`` (prefork children share their parent's)."""
    names = [Path(arg).name for arg in cmdline]
    if "celery" not in names:
        return False
    args = cmdline[names.index("celery") + 1:]
    # "worker" as the subcommand, not as the value of -A/--app (``celery -A worker inspect ping``).
    return any(arg == "worker" and (i == 0 or args[i - 1] not in ("-A", "--app")) for i, arg in enumerate(args))


def descendants(procs: dict[int, Proc], roots: Iterable[int]) -> set[int]:
    """Return the roots and every process below them."""
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [pid for pid in roots if pid in procs]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def api_roots(procs: dict[int, Proc], listeners: Iterable[int]) -> set[int]:
    """Return each listener's topmost ancestor with the same command line: the API's main processes."""
    roots = set()
    for pid in listeners:
        # granian's workers listen; their main process (same command line) is the parent.
        while pid in procs and procs[pid].ppid in procs and procs[procs[pid].ppid].cmdline == procs[pid].cmdline:
            pid = procs[pid].ppid
        roots.add(pid)
    return roots


def worker_pids(procs: dict[int, Proc], broker_of: Callable[[int], str | None], broker: str | None) -> set[int]:
    """Return the process trees of the celery workers whose broker is ``broker`` (all of them when it is None)."""
    roots = [p.pid for p in procs.values() if is_celery_worker(p.cmdline)
             and not (p.ppid in procs and is_celery_worker(procs[p.ppid].cmdline))]
    # A worker whose environment cannot be read (another user's, or one exiting) is not known to be ours.
    return descendants(procs, [pid for pid in roots if broker is None or broker_of(pid) == broker])


def classify(procs: dict[int, Proc], listeners: Iterable[int], broker_of: Callable[[int], str | None],
             broker: str | None = None) -> dict[int, str]:
    """Map each pid of the stack to its role, ``api`` or ``worker``; the broker defaults to the API's."""
    roots = api_roots(procs, listeners)
    api = descendants(procs, roots)
    if broker is None and roots:
        broker = broker_of(min(roots))
    roles = dict.fromkeys(worker_pids(procs, broker_of, broker), "worker")
    roles.update(dict.fromkeys(api, "api"))
    return roles


def snapshot() -> dict[int, Proc]:
    """Read every visible process's parent, command line and RSS."""
    procs = {}
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "memory_info"]):
        info = p.info
        if info["cmdline"] and info["memory_info"] is not None:
            procs[info["pid"]] = Proc(info["pid"], info["ppid"] or 0, tuple(info["cmdline"]), info["memory_info"].rss)
    return procs


def listening_pids(port: int, procs: dict[int, Proc]) -> set[int]:
    """Return the pids listening on TCP ``port``; where the OS hides sockets, the ``-m api`` processes on it."""
    try:
        return {c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    except psutil.AccessDenied:  # macOS without root: fall back to the command line and PORT
        return {p.pid for p in procs.values() if p.cmdline[1:3] == ("-m", "api")
                and int(environment(p.pid, "PORT") or 9191) == port}


def environment(pid: int, name: str) -> str | None:
    """Return a process's environment variable (pydantic-settings reads names in any case), None if unreadable."""
    try:
        env = psutil.Process(pid).environ()
    except (psutil.Error, OSError):
        return None
    return next((value for key, value in env.items() if key.upper() == name), "")


def broker_of(pid: int) -> str | None:
    """Return the broker URL a process uses: its CELERY_BROKER_URL or the settings' default."""
    value = environment(pid, "CELERY_BROKER_URL")
    if value is None:
        return None
    return value or DEFAULT_BROKER


def sample(port: int, broker: str | None, start: float) -> list[dict[str, object]]:
    """Take one sample: one row per process of the stack."""
    procs = snapshot()
    roles = classify(procs, listening_pids(port, procs), broker_of, broker)
    now = time.time()
    return [{"elapsed_s": f"{now - start:.1f}", "time": f"{now:.1f}", "role": role, "pid": pid,
             "rss_mb": f"{procs[pid].rss / 2**20:.1f}"} for pid, role in sorted(roles.items(), key=lambda r: r[::-1])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9191, help="the API's port (default 9191)")
    parser.add_argument("--interval", type=parse_duration, default=10.0, help="time between samples (10, 10s, 1m)")
    parser.add_argument("--output", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--broker", help="the workers' broker URL (default: the API process's)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    start = time.time()
    rows = sample(args.port, args.broker, start)
    roles = {str(row["role"]) for row in rows}
    if "api" not in roles:
        print(f"rss: no process on this machine listens on port {args.port}", file=sys.stderr)
        return 2
    if "worker" not in roles:
        print("rss: no celery worker on this machine uses the API's broker", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        for role in ("api", "worker"):
            print(f"rss: {role} pids {' '.join(str(r['pid']) for r in rows if r['role'] == role)}")
        print(f"rss: sampling every {args.interval:g} s into {args.output}")
        while True:
            writer.writerows(rows)
            fh.flush()
            if stop.is_set():
                return 0
            # A signal cuts the wait short; the sample after it is the run's last.
            stop.wait(args.interval)
            rows = sample(args.port, args.broker, start)


if __name__ == "__main__":
    sys.exit(main())
