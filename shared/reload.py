"""Make every worker check its model alias now: ``python -m shared.reload`` (``make reload``).

Only Celery is needed (the API image can run it). Each worker acknowledges the ``iris_reload_model`` broadcast
at once with a ticket, checks off its hot path, and its ``iris_model_info`` reply answers the ticket when the
check is done; this prints the version each worker then serves, and why it refused a version if it did.
"""

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery

from shared import tasks
from shared.celery_app import create_celery
from shared.settings import get_settings


def _replies(app: Celery, command: str, timeout: float, destination: list[str] | None = None) -> dict[str, Any]:
    replies = app.control.broadcast(command, reply=True, timeout=timeout, destination=destination,
                                    limit=len(destination) if destination else None) or []
    return {name: info for reply in replies for name, info in reply.items() if isinstance(info, dict)}


def request_reload(app: Celery, timeout: float = 1.0) -> dict[str, int]:
    """Broadcast the reload command; return {worker: ticket} of the workers that acknowledged it."""
    return {name: int(info["ticket"]) for name, info in _replies(app, tasks.RELOAD_MODEL_COMMAND, timeout).items()
            if "ticket" in info}


def wait_for_checks(app: Celery, tickets: dict[str, int], timeout: float,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> dict[str, dict[str, Any]]:
    """Ask the workers for their model until each has answered its ticket or ``timeout`` passes; return the infos."""
    done: dict[str, dict[str, Any]] = {}
    deadline = clock() + timeout
    while len(done) < len(tickets) and clock() < deadline:
        pending = [name for name in tickets if name not in done]
        for name, info in _replies(app, tasks.MODEL_INFO_COMMAND, 1.0, pending).items():
            if name in tickets and info.get("reload", {}).get("answered", 0) >= tickets[name]:
                done[name] = info
        if len(done) < len(tickets):
            sleep(0.2)  # the broadcast returns as soon as every pending worker replied
    return done


def describe(name: str, info: dict[str, Any]) -> str:
    """Return one line: the version a worker serves after its check, and what the check did."""
    counters = info.get("counters", {})
    line = (f"{name}: serving {info.get('model_name')} version {info.get('model_version')} "
            f"(swaps {counters.get('swaps', 0)}, load failures {counters.get('load_failures', 0)})")
    check = info.get("last_check") or {}
    if check.get("outcome") == "refused":
        line += f"; refused version {check.get('alias_version')}: {check.get('error')}"
    elif check.get("outcome") == "unreachable":
        line += f"; the registry did not answer: {check.get('error')}"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the reload CLI and return the process exit code: 1 when no worker, or not every worker, answered."""
    parser = argparse.ArgumentParser(prog="python -m shared.reload",
                                     description="Make every worker check its model alias now and swap in a new "
                                                 "version; print what each one serves afterwards.")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the checks (60)")
    args = parser.parse_args(argv)
    app = create_celery(get_settings())
    try:
        tickets = request_reload(app)
        if not tickets:
            print("reload: no worker answered", file=sys.stderr)
            return 1
        infos = wait_for_checks(app, tickets, args.timeout)
    finally:
        app.close()
    for name in sorted(tickets):
        print(describe(name, infos[name]) if name in infos else f"{name}: did not finish its check in time")
    return 0 if len(infos) == len(tickets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
