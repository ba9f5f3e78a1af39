"""POST /v1/classify (sync), /v1/classify/async (202 + poll) and /v1/classify/batch."""

from typing import TypeVar

from flask import Blueprint, Response, request, url_for
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from api.errors import PayloadTooLarge, ValidationFailed
from api.extension import service, settings
from api.web import callbacks
from api.web.envelope import success
from api.web.idempotency import idempotency_key
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
        raise ValidationFailed(format_validation_error(exc)) from None


@bp.post("")
def classify() -> Response:
    """Classify one flower and wait for the answer."""
    task_id, result = service().classify(_parse(ClassifyPayload).row())
    return success({**result, "task_id": task_id})


@bp.post("/async")
def classify_async() -> Response:
    """Queue one classification and answer 202 with where to poll (the same task again for a repeated
    Idempotency-Key)."""
    payload = _parse(ClassifyPayload).model_dump()
    task_id = service().classify_async(payload, callbacks.requested(settings()),
                                       idempotency_key(settings().idempotency_prefix, payload))
    location = url_for("tasks.task_status", task_id=task_id)
    return success({"task_id": task_id, "status": "PENDING", "status_url": location}, status=202,
                   headers={"Location": location})


@bp.post("/batch")
def classify_batch() -> Response:
    """Classify up to BATCH_MAX_ROWS flowers in one task, answering in order (as the first request did, for a
    repeated Idempotency-Key)."""
    limit = settings().batch_max_rows
    batch = _parse(BatchPayload)
    if len(batch.instances) > limit:
        raise PayloadTooLarge(f"{len(batch.instances)} instances; at most {limit} per request")
    rows = [item.row() for item in batch.instances]
    _, answers = service().classify_batch(rows, idempotency_key(settings().idempotency_prefix, rows))
    return success(answers)
