"""MLflow's scoring-server protocol beside /v1: POST /invocations, GET /ping and GET /version.

/invocations answers MLflow's ``{"predictions": [...]}``, which MLflow's clients parse; its errors answer the
seed's error envelope, as every other route's do.
"""

from typing import Any

import orjson
from flask import Blueprint, Response, request
from werkzeug.exceptions import UnsupportedMediaType

from api.errors import PayloadTooLarge, QueueUnavailable, ValidationFailed
from api.extension import service, services, settings
from api.web.mlflow_inputs import InvalidInput, TooManyRows, parse_invocation

bp = Blueprint("mlflow_scoring", __name__)

JSON = "application/json"
MODEL_FIELDS = ("model_name", "model_version", "model_run_id")


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), status=200, mimetype=JSON)


def _require_json() -> None:
    """Refuse any body but UTF-8 JSON, as MLflow's server does (its CSV and Parquet are not served here)."""
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if request.mimetype != JSON or charset != "utf-8":
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json "
                                   "(MLflow's text/csv and Parquet inputs are not supported)")


@bp.post("/invocations")
def invocations() -> Response:
    """Classify the rows of an MLflow scoring request as one batch task; answer ``{"predictions": [...]}``."""
    _require_json()
    try:
        rows = parse_invocation(request.get_data(cache=False), settings().batch_max_rows)
    except TooManyRows as exc:
        raise PayloadTooLarge(str(exc)) from None
    except InvalidInput as exc:
        raise ValidationFailed(str(exc)) from None
    _, answers = service().classify_batch(rows)
    return _json({"predictions": [answer["pred_label"] for answer in answers]})


@bp.get("/ping")
def ping() -> Response:
    """Answer 200 while the process is up, with MLflow's body; /readyz tells whether workers answer."""
    return Response("\n", status=200, mimetype=JSON)


@bp.get("/version")
def version() -> Response:
    """Name the service's version and the model versions the workers serve (null when none answers)."""
    workers = _workers()
    versions = sorted({str(info.get("model_version")) for info in workers.values()}, key=lambda v: (len(v), v))
    return _json({"service_version": settings().tag, "model_versions": versions or None,
                  "workers": {name: {key: info.get(key) for key in MODEL_FIELDS} for name, info in workers.items()}})


def _workers() -> dict[str, Any]:
    """Return {worker: model info}, or nothing while Redis is down: /version describes, /readyz judges."""
    found = services()
    if found.circuit.is_open():
        return {}
    try:
        return found.readiness.workers.workers()
    except QueueUnavailable:
        return {}
