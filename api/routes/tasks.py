"""GET /v1/tasks/<task_id>: poll a task this service issued; DELETE: cancel it before it runs."""

import uuid

from flask import Blueprint, Response

from api.errors import NotFound
from api.extension import service
from api.web.envelope import success

bp = Blueprint("tasks", __name__, url_prefix="/v1/tasks")


def _issued(task_id: str) -> str:
    """Return ``task_id`` if it is a UUID; else no task of this service has it: NotFound."""
    try:
        uuid.UUID(task_id)
    except ValueError:
        raise NotFound(f"no task {task_id!r}") from None
    return task_id


@bp.get("/<task_id>")
def task_status(task_id: str) -> Response:
    """Answer the task's Celery state with its result or error."""
    body = service().status(_issued(task_id))
    if body is None:
        raise NotFound(f"no task {task_id}: unknown or expired")
    return success(body)


@bp.delete("/<task_id>")
def cancel_task(task_id: str) -> Response:
    """Cancel a task no worker has started: answer 200 with its state, REVOKED; 409 once it started or ended."""
    body = service().cancel(_issued(task_id))
    if body is None:
        raise NotFound(f"no task {task_id}: unknown or expired")
    return success(body)
