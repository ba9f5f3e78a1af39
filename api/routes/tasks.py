"""GET /v1/tasks/<task_id>: poll a task this service issued."""

import uuid

from flask import Blueprint, Response

from api.errors import NotFound
from api.extension import service
from api.web.envelope import success

bp = Blueprint("tasks", __name__, url_prefix="/v1/tasks")


@bp.get("/<task_id>")
def task_status(task_id: str) -> Response:
    """Answer the task's Celery state with its result or error."""
    try:
        uuid.UUID(task_id)
    except ValueError:
        raise NotFound(f"no task {task_id!r}") from None
    body = service().status(task_id)
    if body is None:
        raise NotFound(f"no task {task_id}: unknown or expired")
    return success(body)
