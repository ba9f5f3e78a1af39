"""Refuse to run a task the API cancelled: its start marks it STARTED unless its stored meta says REVOKED.

The public tasks take this class as their base with ``track_started`` off: :meth:`Revocable.before_start` makes
the STARTED write that Celery's tracer would make (one script call where the tracer makes a GET, a SET and a
PUBLISH), and in the same atomic step finds a REVOKED meta the API wrote (shared/revocation.py). A revoked task
raises Celery's ``Ignore``: its message is acknowledged, no state is stored over REVOKED, and its body never runs.
"""

import os
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.utils.nodenames import gethostname

from shared import revocation


class Revocable(Task):
    """A task that does not start once ``DELETE /v1/tasks/<id>`` revoked it."""

    track_started = False  # before_start marks it STARTED instead, atomically with the check

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Mark the task STARTED, or raise Ignore when it was revoked."""
        if not revocation.start(self.backend, task_id, os.getpid(), self.request.hostname or gethostname()):
            raise Ignore(f"task {task_id} was revoked before it started")
