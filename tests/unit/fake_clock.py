"""A monotonic clock that moves only when a test says so, for code that takes a ``clock`` callable."""


class FakeClock:
    """Return ``now`` when called; ``sleep`` moves it on instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
