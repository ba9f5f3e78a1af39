"""make reload's client: it collects each worker's ticket, waits for the checks, and says what each serves."""

from types import SimpleNamespace
from typing import Any

from shared import tasks
from shared.reload import describe, request_reload, wait_for_checks
from tests.unit.fake_clock import FakeClock


def info(version: str, answered: int, outcome: str = "swapped", error: str | None = None) -> dict[str, Any]:
    return {"model_name": "iris-classifier", "model_version": version,
            "counters": {"swaps": 1, "load_failures": 1 if outcome == "refused" else 0},
            "last_check": {"outcome": outcome, "alias_version": "4" if outcome == "refused" else version,
                           "error": error},
            "reload": {"requested": 1, "answered": answered}}


class FakeControl:
    """Answer broadcasts from a script: one list of replies per call of each command."""

    def __init__(self, script: dict[str, list[list[dict[str, Any]]]]) -> None:
        self.script = script
        self.calls: list[tuple[str, Any]] = []

    def broadcast(self, command: str, reply: bool, timeout: float, destination: list[str] | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
        self.calls.append((command, destination))
        return self.script[command].pop(0)


def test_request_reload_keeps_the_tickets_of_the_workers_that_acknowledged() -> None:
    control = FakeControl({tasks.RELOAD_MODEL_COMMAND: [[{"a@h": {"ok": "model check requested", "ticket": 3}},
                                                          {"b@h": {"error": "this worker is not polling yet"}}]]})
    assert request_reload(SimpleNamespace(control=control)) == {"a@h": 3}


def test_wait_for_checks_waits_until_each_worker_answered_its_ticket() -> None:
    control = FakeControl({tasks.MODEL_INFO_COMMAND: [
        [{"a@h": info("1", answered=0)}, {"b@h": info("2", answered=5)}],
        [{"a@h": info("2", answered=1)}],
    ]})
    clock = FakeClock(0.0)
    done = wait_for_checks(SimpleNamespace(control=control), {"a@h": 1, "b@h": 5}, 10.0,
                           clock=clock, sleep=clock.sleep)
    assert {name: i["model_version"] for name, i in done.items()} == {"a@h": "2", "b@h": "2"}
    assert control.calls == [(tasks.MODEL_INFO_COMMAND, ["a@h", "b@h"]), (tasks.MODEL_INFO_COMMAND, ["a@h"])]


def test_wait_for_checks_gives_up_at_the_timeout() -> None:
    control = FakeControl({tasks.MODEL_INFO_COMMAND: [[{"a@h": info("1", answered=0)}]] * 100})
    clock = FakeClock(0.0)
    done = wait_for_checks(SimpleNamespace(control=control), {"a@h": 1}, 1.0,
                           clock=clock, sleep=clock.sleep)
    assert done == {} and len(control.calls) == 5


def test_describe_names_the_version_served_and_a_refused_one() -> None:
    assert describe("a@h", info("2", 1)) == "a@h: serving iris-classifier version 2 (swaps 1, load failures 0)"
    refused = describe("a@h", info("2", 1, outcome="refused", error="model expects features [...]"))
    assert refused.endswith("(swaps 1, load failures 1); refused version 4: model expects features [...]")
