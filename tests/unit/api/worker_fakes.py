"""Stand-ins for the workers' control replies and the readiness check, for route tests that need no Redis."""

import dataclasses
from collections.abc import Callable
from typing import Any

from api.errors import QueueUnavailable


class FakeWorkers:
    """Answer the model-info broadcast with ``found``, or raise as a Redis that does not answer; count the asks."""

    def __init__(self, found: dict[str, Any] | None = None) -> None:
        self.found: dict[str, Any] = found if found is not None else {}
        self.calls = 0
        self.hangs = False

    def workers(self) -> dict[str, Any]:
        self.calls += 1
        if self.hangs:
            raise QueueUnavailable("Redis does not answer")
        return self.found


@dataclasses.dataclass
class FakeReadiness:
    """A readiness check that passes, or raises ``failure()``; its ``workers`` answer the routes that list them."""

    workers: FakeWorkers
    failure: Callable[[], Exception] | None = None

    def check(self) -> dict[str, Any]:
        if self.failure is not None:
            raise self.failure()
        return {"status": "ready"}
