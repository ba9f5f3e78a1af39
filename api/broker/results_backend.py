"""Celery's Redis result backend, minus the per-task subscription that send_task opens (celery#8166).

For every task it sends, Celery's Redis backend subscribes to the task's result channel (``on_task_call``),
so that a later ``AsyncResult.get()`` can be woken. The API never waits that way: it reads results with GET
(``GET /v1/tasks/<id>``, the batch endpoint's short poll). A result that arrives on such a subscription with
no waiter is kept in a per-thread buffer of up to 8,192 results, which grew one API process by 3 MB a
minute in the soak (docs/load-testing.md, "Soak test"). Written against Celery 5.7.0 (pinned in pyproject.toml);
tests/integration/api/broker/test_results_backend.py fails if the hook changes.
"""

from typing import Any

from celery.backends.redis import RedisBackend


class PollingRedisBackend(RedisBackend):
    """A Redis result backend for callers that read results and never wait on a subscription."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Subscribe to nothing when a task is sent."""


def polling_backend_url(url: str) -> str:
    """Return a result backend setting that selects :class:`PollingRedisBackend` for a Redis ``url``."""
    if url.startswith(("redis://", "rediss://")):
        return f"{__name__}:PollingRedisBackend+{url}"
    return url
