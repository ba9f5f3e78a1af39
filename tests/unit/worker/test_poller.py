"""The model poller: checks every interval after the last check, and at once on request, on a fake clock."""

from collections.abc import Callable

from worker.poller import ModelPoller


class ScriptedEvent:
    """An Event whose wait() advances a fake clock instead of sleeping; actions run at scripted times."""

    def __init__(self, actions: list[tuple[float, Callable[[], None]]]) -> None:
        self.now = 0.0
        self.flag = False
        self.actions = sorted(actions, key=lambda action: action[0])
        self.timeouts: list[float] = []

    def clock(self) -> float:
        return self.now

    def set(self) -> None:
        self.flag = True

    def clear(self) -> None:
        self.flag = False

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "the poller must never wait without a timeout"
        self.timeouts.append(timeout)
        deadline = self.now + timeout
        while not self.flag and self.actions and self.actions[0][0] <= deadline:
            at, action = self.actions.pop(0)
            self.now = max(self.now, at)
            action()
        if not self.flag:
            self.now = deadline
        return self.flag


def run(interval: float, requests_at: tuple[float, ...], stop_at: float,
        check: Callable[[ModelPoller, bool], None] | None = None) -> tuple[ModelPoller, list[tuple[float, bool]]]:
    """Run a poller on a scripted clock until ``stop_at``; return it and its (time, forced) checks."""
    checks: list[tuple[float, bool]] = []
    actions: list[tuple[float, Callable[[], None]]] = []
    event = ScriptedEvent(actions)
    poller = ModelPoller(lambda forced: None, interval, clock=event.clock, event=event)

    def record(forced: bool) -> None:
        checks.append((event.now, forced))
        if check is not None:
            check(poller, forced)

    poller._check = record
    event.actions = sorted([*((at, poller.request) for at in requests_at), (stop_at, poller.stop)],
                           key=lambda action: action[0])
    poller.run()
    return poller, checks


def test_checks_every_interval_and_never_sooner() -> None:
    _, checks = run(15.0, (), stop_at=50.0)
    assert checks == [(15.0, False), (30.0, False), (45.0, False)]


def test_a_request_checks_at_once_and_the_next_poll_is_an_interval_after_it() -> None:
    poller, checks = run(15.0, (20.0,), stop_at=50.0)
    assert checks == [(15.0, False), (20.0, True), (35.0, False)]
    assert (poller.requested, poller.answered) == (1, 1)


def test_a_request_made_during_a_check_gets_a_check_of_its_own() -> None:
    def request_once(poller: ModelPoller, forced: bool) -> None:
        if poller.requested == 1:
            poller.request()  # arrives while the first forced check runs: that check may have missed it

    poller, checks = run(15.0, (5.0,), stop_at=12.0, check=request_once)
    assert checks == [(5.0, True), (5.0, True)]
    assert (poller.requested, poller.answered) == (2, 2)


def test_a_check_that_raises_does_not_stop_the_polling() -> None:
    def explode(poller: ModelPoller, forced: bool) -> None:
        raise RuntimeError("boom")

    _, checks = run(10.0, (), stop_at=35.0, check=explode)
    assert [at for at, _ in checks] == [10.0, 20.0, 30.0]


def test_stop_ends_the_loop_without_a_last_check() -> None:
    poller, checks = run(15.0, (), stop_at=7.0)
    assert checks == []
    assert poller.info() == {"poll_seconds": 15.0, "reload": {"requested": 0, "answered": 0}}
