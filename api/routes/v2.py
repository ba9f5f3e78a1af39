"""The Open Inference Protocol V2 (KServe V2) REST routes under /v2: health, metadata and inference.

Inference goes the way /v1 does: one row through the edge batcher (as /v1/classify), more as one task (as
/v1/classify/batch), to the same workers, behind the same API keys, counted in the same metrics. Errors answer the
protocol's ``{"error": "..."}`` (api/web/v2_errors.py) with the status /v1 would answer. The one model is
IRIS_MODEL_NAME; its versions are those the workers serve now (the champion's, two during a swap).
"""

from typing import Any

import orjson
from flask import Blueprint, Response, request

from api.errors import NotFound, NoWorkers, QueueUnavailable
from api.extension import service, services, settings
from api.web import v2_errors
from api.web.v2_tensors import INPUT, LABEL, PROBABILITIES, build_outputs, parse_infer
from shared.schemas import FEATURES, LABELS

bp = Blueprint("v2", __name__, url_prefix="/v2")
v2_errors.init_blueprint(bp)

SERVER_NAME = "iris-queue-serving"
# Triton's binary tensor extension, for inputs: tritonclient sends numpy arrays that way by default.
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "sklearn_skops"  # <project>_<format>, as the protocol names platforms: a scikit-learn model in skops
HEADER_LENGTH = "Inference-Header-Content-Length"


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), status=200, mimetype="application/json")


def _model(name: str) -> None:
    """Refuse any model name but the one the workers serve."""
    if name != settings().iris_model_name:
        raise NotFound(f"unknown model {name!r}; this server serves {settings().iris_model_name!r}")


def _versions(required: bool) -> list[str]:
    """Return the versions the workers serve now; with ``required``, a 503 when they cannot be read or none
    answers, else an empty list."""
    found = services()
    try:
        if found.circuit.is_open():
            raise QueueUnavailable()
        workers = found.readiness.workers.workers()  # /readyz's broadcast, cached for 2 s
    except QueueUnavailable:
        if required:
            raise
        return []
    versions = sorted({str(info["model_version"]) for info in workers.values()}, key=lambda v: (len(v), v))
    if required and not versions:
        raise NoWorkers()
    return versions


def _version(name: str, version: str) -> None:
    """Refuse a version no worker serves now."""
    served = _versions(required=True)
    if version not in served:
        raise NotFound(f"model {name!r} has no version {version!r} served; served: {', '.join(served)}")


@bp.get("/health/live")
def server_live() -> Response:
    """Answer 200 while the process is up."""
    return _json({"live": True})


@bp.get("/health/ready")
def server_ready() -> Response:
    """Answer 200 when /readyz would: Redis and a worker with a loaded model answer; else a 503."""
    services().readiness.check()
    return _json({"ready": True})


@bp.get("")
def server_metadata() -> Response:
    """Name the server, its version (TAG) and the protocol extensions it supports."""
    return _json({"name": SERVER_NAME, "version": settings().tag, "extensions": list(EXTENSIONS)})


def _metadata(name: str, versions: list[str]) -> dict[str, Any]:
    feature_order = ",".join(FEATURES)
    return {
        "name": name, "versions": versions, "platform": PLATFORM,
        # Also accepted (docs/api.md): FP64, and four [N] tensors named by the columns.
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, len(FEATURES)],
                    "parameters": {"columns": feature_order, "datatypes": "FP32,FP64"}}],
        "outputs": [{"name": LABEL, "datatype": "BYTES", "shape": [-1]},
                    {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(LABELS)],
                     "parameters": {"classes": ",".join(LABELS)}}],
    }


@bp.get("/models/<model_name>")
def model_metadata(model_name: str) -> Response:
    """Describe the model: the versions served, its input and output tensors."""
    _model(model_name)
    return _json(_metadata(model_name, _versions(required=False)))


@bp.get("/models/<model_name>/versions/<model_version>")
def model_version_metadata(model_name: str, model_version: str) -> Response:
    """Describe the model at a version the workers serve; any other version is a 404."""
    _model(model_name)
    _version(model_name, model_version)
    return _json(_metadata(model_name, _versions(required=False)))


def _ready(model_name: str) -> Response:
    services().readiness.check()
    return _json({"name": model_name, "ready": True})


@bp.get("/models/<model_name>/ready")
def model_ready(model_name: str) -> Response:
    """Answer 200 when a worker serving the model answers (the server ready check: it serves one model)."""
    _model(model_name)
    return _ready(model_name)


@bp.get("/models/<model_name>/versions/<model_version>/ready")
def model_version_ready(model_name: str, model_version: str) -> Response:
    """Answer 200 when a worker serving this version answers; a version none serves is a 404."""
    _model(model_name)
    _version(model_name, model_version)
    return _ready(model_name)


def _infer(model_name: str) -> Response:
    """Classify the request's rows as /v1 does and answer the protocol's inference response."""
    parsed = parse_infer(request.get_data(cache=False), request.headers.get(HEADER_LENGTH),
                         settings().batch_max_rows)
    if len(parsed.rows) == 1:
        task_id, answer = service().classify(parsed.rows[0])
        answers = [answer]
    else:
        task_id, answers = service().classify_batch(parsed.rows)
    return _json({"model_name": model_name, "model_version": str(answers[0]["model_version"]),
                  "id": parsed.id if parsed.id is not None else task_id,
                  "outputs": build_outputs(answers, parsed.outputs)})


@bp.post("/models/<model_name>/infer")
def model_infer(model_name: str) -> Response:
    """Classify a tensor of rows with the version the workers serve."""
    _model(model_name)
    return _infer(model_name)


@bp.post("/models/<model_name>/versions/<model_version>/infer")
def model_version_infer(model_name: str, model_version: str) -> Response:
    """Classify a tensor of rows, once the version is one the workers serve (else a 404)."""
    _model(model_name)
    _version(model_name, model_version)
    return _infer(model_name)
