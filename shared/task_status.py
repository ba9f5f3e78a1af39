"""What GET /v1/tasks/<id> answers for a task, built from its Celery state and result: the API serves it, and the
worker posts the same JSON to the task's callback URL (worker/webhooks.py)."""

from typing import Any

from celery import states

from shared.redact import redact


def status_data(task_id: str, state: str, result: Any) -> dict[str, Any]:
    """Return the envelope's ``data``: the task id, its state, and its result or the error it raised."""
    data: dict[str, Any] = {"task_id": task_id, "status": state, "result": None, "error": None}
    if state == states.SUCCESS:
        data["result"] = result
    elif state in states.PROPAGATE_STATES:
        # The worker's exception text, served to the client: rid of any password a URL in it holds.
        data["error"] = {"raised": type(result).__name__, "message": redact(str(result))}
    return data


def success_envelope(data: Any, version: str) -> dict[str, Any]:
    """Return the seed's success envelope around ``data`` (api/web/envelope.py answers the same)."""
    return {"message": "success", "data": data, "error": None, "version": version}
