"""POST /v1/classify (sync), /v1/classify/async (202 + poll) and /v1/classify/batch."""

from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, request, url_for
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from api.envelope import ApiError, success
from api.queue import TimedOut, get_queue
from shared.schemas import BatchPayload, ClassifyPayload, format_validation_error

M = TypeVar("M", bound=BaseModel)

bp = Blueprint("classify", __name__, url_prefix="/v1/classify")


def _parse(model: type[M]) -> M:
    """Validate the raw JSON body straight into ``model``; a bad body is a 400 naming the field."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    try:
        return model.model_validate_json(request.get_data(cache=False))
    except ValidationError as exc:
        raise ApiError(400, "ValidationError", format_validation_error(exc)) from None


def _poll_url(task_id: str) -> str:
    return url_for("tasks.task_status", task_id=task_id)


def _timed_out(task_id: str) -> ApiError:
    """Describe a 504 with the id and where to poll: the task stays queued and will be answered."""
    location = _poll_url(task_id)
    seconds = get_queue().settings.sync_timeout_seconds
    return ApiError(504, "Timeout", f"no worker answered within {seconds:g} s; poll status_url",
                    data={"task_id": task_id, "status": "PENDING", "status_url": location},
                    headers={"Location": location})


@bp.post("")
def classify() -> Response:
    """Classify one flower and wait for the answer."""
    payload = _parse(ClassifyPayload)
    try:
        task_id, result = get_queue().classify(payload.row())
    except TimedOut as exc:
        raise _timed_out(exc.task_id) from None
    return success({**result, "task_id": task_id})


@bp.post("/async")
def classify_async() -> Response:
    """Queue one classification and answer 202 with where to poll."""
    payload = _parse(ClassifyPayload)
    task_id = get_queue().classify_async(payload.model_dump())
    location = _poll_url(task_id)
    return success({"task_id": task_id, "status": "PENDING", "status_url": location}, status=202,
                   headers={"Location": location})


@bp.post("/batch")
def classify_batch() -> Response:
    """Classify up to BATCH_MAX_ROWS flowers in one task, answering in order."""
    limit = current_app.config["BATCH_MAX_ROWS"]
    batch = _parse(BatchPayload)
    if len(batch.instances) > limit:
        raise ApiError(413, "PayloadTooLarge", f"{len(batch.instances)} instances; at most {limit} per request")
    payloads: list[dict[str, Any]] = [item.model_dump() for item in batch.instances]
    try:
        _, answers = get_queue().classify_batch(payloads)
    except TimedOut as exc:
        raise _timed_out(exc.task_id) from None
    return success(answers)
