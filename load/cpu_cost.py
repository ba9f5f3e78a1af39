"""Measure the CPU each sync request costs a running stack, alternating between stacks: an A/B of a setting.

    python -m load.cpu_cost --stack on=9191 --stack off=9291 --rounds 6 --seconds 15

Each ``--stack NAME=PORT`` is a running stack (its API on PORT, its workers on the broker that API's processes
were started with). Rounds load one stack at a time with wrk (32 connections), so the idle one costs nothing,
and read the user + system CPU time of the API's process tree and of its workers' before and after. CPU per
request varies far less than req/s on a small shared machine, where wrk, the API, the worker and Redis
share two cores. The last line compares each stack's median with the first's: ``on=… off=… (+x.x%)``.
"""

import argparse
import statistics
import sys

import psutil

from load.bench import wrk
from load.rss import broker_of, classify, listening_pids, snapshot

FLOWER = {"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}


def cpu_seconds(pids: set[int]) -> float:
    """Return the user + system CPU seconds the processes have used; a process that ended counts 0."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def stack_pids(port: int) -> dict[str, set[int]]:
    """Return {"api": pids, "worker": pids} of the stack whose API listens on ``port``."""
    procs = snapshot()
    listeners = listening_pids(port, procs)
    if not listeners:
        sys.exit(f"nothing listens on port {port}")
    roles = classify(procs, listeners, broker_of)  # the workers on the broker the API was started with
    found: dict[str, set[int]] = {"api": set(), "worker": set()}
    for pid, role in roles.items():
        found[role].add(pid)
    return found


def measure(port: int, connections: int, seconds: int) -> dict[str, float]:
    """Load one stack and return its req/s and the API's and the workers' CPU µs per request."""
    pids = stack_pids(port)
    before = {role: cpu_seconds(group) for role, group in pids.items()}
    result = wrk(f"http://127.0.0.1:{port}/v1/classify", FLOWER, connections, seconds)
    after = {role: cpu_seconds(group) for role, group in pids.items()}
    requests = result["rps"] * seconds
    per = {role: (after[role] - before[role]) * 1e6 / requests for role in pids}
    return {"rps": result["rps"], "errors": result["errors"], "api_us": per["api"], "worker_us": per["worker"],
            "total_us": per["api"] + per["worker"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", action="append", required=True, help="NAME=PORT of a running stack's API")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=15, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    stacks = [(name, int(port)) for name, port in (item.split("=", 1) for item in args.stack)]
    for _, port in stacks:  # warm each stack once, not counted
        wrk(f"http://127.0.0.1:{port}/v1/classify", FLOWER, args.connections, 3)
    totals: dict[str, list[float]] = {name: [] for name, _ in stacks}
    for round_ in range(1, args.rounds + 1):
        for name, port in stacks:
            got = measure(port, args.connections, args.seconds)
            totals[name].append(got["total_us"])
            print(f"round={round_} stack={name} rps={got['rps']:.0f} errors={got['errors']:.0f} "
                  f"api_us={got['api_us']:.0f} worker_us={got['worker_us']:.0f} total_us={got['total_us']:.0f}",
                  flush=True)
    base = statistics.median(totals[stacks[0][0]])
    print(" ".join(f"{name}={statistics.median(values):.0f}us"
                   + ("" if name == stacks[0][0] else f" ({(statistics.median(values) / base - 1) * 100:+.1f}%)")
                   for name, values in totals.items()))


if __name__ == "__main__":
    main()
