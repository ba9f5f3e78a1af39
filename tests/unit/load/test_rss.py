"""Finding the stack's processes from a process table: the API's tree, and the workers on its broker."""

from load.rss import Proc, classify, is_celery_worker

API = ("/app/.venv/bin/python", "-m", "api")
WORKER = ("/app/.venv/bin/python", ".venv/bin/celery", "-A", "worker", "worker", "--without-gossip")
MINE, OTHER = "redis://127.0.0.1:6405/0", "redis://127.0.0.1:6379/0"


def table(*rows: tuple[int, int, tuple[str, ...]]) -> dict[int, Proc]:
    return {pid: Proc(pid, ppid, cmdline, 1 << 20) for pid, ppid, cmdline in rows}


def test_celery_worker_command_lines_are_recognised() -> None:
    assert is_celery_worker(WORKER)
    assert is_celery_worker(("celery", "-A", "worker", "worker"))
    assert not is_celery_worker(("celery", "-A", "worker", "inspect", "ping"))
    assert not is_celery_worker(("/usr/bin/python", "-m", "worker"))
    assert not is_celery_worker(API)


def test_the_api_is_the_listeners_main_process_and_all_its_workers() -> None:
    procs = table((1, 0, ("bash", "up.sh")), (10, 1, API), (11, 10, API), (12, 10, API), (20, 1, WORKER))
    roles = classify(procs, listeners=[11, 12], broker_of=lambda pid: MINE)
    assert roles == {10: "api", 11: "api", 12: "api", 20: "worker"}


def test_only_workers_on_the_apis_broker_are_counted() -> None:
    brokers = {10: MINE, 20: MINE, 21: MINE, 30: OTHER, 31: OTHER}
    procs = table((10, 1, API), (20, 1, WORKER), (21, 20, WORKER), (30, 1, WORKER), (31, 30, WORKER))
    roles = classify(procs, listeners=[10], broker_of=brokers.get)
    assert roles == {10: "api", 20: "worker", 21: "worker"}


def test_a_worker_whose_environment_is_unreadable_is_left_out() -> None:
    procs = table((10, 1, API), (20, 1, WORKER), (30, 1, WORKER))
    roles = classify(procs, listeners=[10], broker_of=lambda pid: None if pid == 30 else MINE)
    assert roles == {10: "api", 20: "worker"}


def test_every_worker_counts_when_the_apis_broker_cannot_be_read() -> None:
    brokers = {20: MINE, 30: OTHER}
    procs = table((10, 1, API), (20, 1, WORKER), (30, 1, WORKER))
    roles = classify(procs, listeners=[10], broker_of=brokers.get)
    assert roles == {10: "api", 20: "worker", 30: "worker"}


def test_an_explicit_broker_overrides_the_apis() -> None:
    brokers = {10: MINE, 20: MINE, 30: OTHER}
    procs = table((10, 1, API), (20, 1, WORKER), (30, 1, WORKER))
    assert classify(procs, listeners=[10], broker_of=brokers.get, broker=OTHER) == {10: "api", 30: "worker"}


def test_nothing_is_found_when_nothing_listens() -> None:
    procs = table((20, 1, WORKER))
    assert classify(procs, listeners=[], broker_of=lambda pid: MINE) == {20: "worker"}
