"""Describe the API as OpenAPI 3.1: apispec assembles the JSON Schemas pydantic generates from the models.

The description is built once per app, on the first GET /openapi.json, and kept as JSON bytes; nothing here
runs on another request. Each route's path comes from the app's own url_map, so a renamed route cannot drift.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from apispec import APISpec
from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.extension import KEY as SERVICES
from api.openapi import models as docs
from api.openapi import v2_models as v2
from api.web import auth, idempotency
from shared.schemas import BatchPayload, ClassifyPayload, Prediction

KEY = "iris.openapi"
OPENAPI_VERSION = "3.1.0"  # 3.1 takes pydantic's JSON Schema 2020-12 as it is (numeric exclusiveMinimum, null)
REF = "#/components/schemas/{model}"
# Endpoints of these blueprints are pages, not the API: the demo, Swagger UI and this description itself.
UNDOCUMENTED_BLUEPRINTS = frozenset({"demo", "docs"})
JSON = "application/json"
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]

# Shared error answers, each an ErrorEnvelope with the headers the client needs to act on it.
ERRORS: dict[int, tuple[str, str, type[BaseModel], tuple[str, ...]]] = {
    400: ("ValidationError", "The body does not match the schema (the message names each field and row, never "
          "the values), or is not JSON; or a Callback-URL is refused (the message says why).", docs.ErrorEnvelope,
          ()),
    401: ("Unauthorized", "No API key, or a wrong one: send `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
          docs.ErrorEnvelope, ("WWW-Authenticate",)),
    404: ("NotFound", "No such task: never issued by this service, expired, or not a UUID.", docs.ErrorEnvelope, ()),
    413: ("PayloadTooLarge", "More rows than BATCH_MAX_ROWS, or a body over the size limit.", docs.ErrorEnvelope, ()),
    415: ("UnsupportedMediaType", "The body is not sent as `Content-Type: application/json` (UTF-8).",
          docs.ErrorEnvelope, ()),
    500: ("InternalError", "A worker could not classify the request (`TaskFailed`, `data` holds its `task_id`), or "
          "an unexpected error (`data` is null; the message names the request id).", docs.ErrorEnvelope, ()),
    503: ("Unavailable", "Nothing was queued: Redis does not answer (`QueueUnavailable`), QUEUE_MAX_LENGTH tasks "
          "wait (`QueueFull`), no worker with a model answers (`NoWorkers`) or WEBHOOK_MAX_PENDING webhooks are "
          "pending (`CallbacksFull`). Retry after `Retry-After` seconds.",
          docs.ErrorEnvelope, ("Retry-After",)),
    409: ("Conflict", "The task has started or finished, or is not one DELETE may cancel (`TaskNotCancellable`, "
          "`data` holds `task_id` and the `status` found); or the first request with this Idempotency-Key is still "
          "being answered (`IdempotencyKeyInUse`: retry after `Retry-After`).", docs.ErrorEnvelope, ()),
    422: ("IdempotencyKeyReused", "This Idempotency-Key came before with another request (body, route or "
          "Callback-URL); nothing was queued.", docs.ErrorEnvelope, ()),
    504: ("Timeout", "No worker answered within SYNC_TIMEOUT_SECONDS. The task stays queued: poll "
          "`data.status_url`, also sent as `Location`.", docs.TimeoutEnvelope, ("Location",)),
}
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "The request's id: the client's own X-Request-ID when sane, else a new one. "
                     "Log lines and the task carry it.", "required": True,
                     "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"}},
    "Location": {"description": "Where to poll the task: GET /v1/tasks/{task_id}.", "required": True,
                 "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "WWW-Authenticate": {"description": "The scheme to authenticate with.", "required": True,
                         "schema": {"type": "string", "const": "Bearer"}},
}
# The Open Inference Protocol's routes answer its own error object, with the same statuses and headers.
V2_ERRORS: dict[int, tuple[str, str, type[BaseModel], tuple[str, ...]]] = {
    400: ("V2BadRequest", "The body is not an inference request this model takes: the message names the field, "
          "tensor, row and feature, never the values.", v2.V2Error, ()),
    401: ("V2Unauthorized", ERRORS[401][1], v2.V2Error, ("WWW-Authenticate",)),
    404: ("V2NotFound", "No such model (the one model is IRIS_MODEL_NAME), or no worker serves that version now.",
          v2.V2Error, ()),
    413: ("V2PayloadTooLarge", "More rows than BATCH_MAX_ROWS, or a body over the size limit.", v2.V2Error, ()),
    500: ("V2InternalError", "A worker could not classify the request, or an unexpected error (the message names "
          "the task or the request id).", v2.V2Error, ()),
    503: ("V2Unavailable", "Not ready, or nothing was queued: Redis does not answer, the queues are full or no "
          "worker with a model answers. Retry after `Retry-After` seconds.", v2.V2Error, ("Retry-After",)),
    504: ("V2Timeout", "No worker answered within SYNC_TIMEOUT_SECONDS. The task stays queued: the message names "
          "its id and the /v1 URL to poll, also sent as `Location`.", v2.V2Error, ("Location",)),
}
ERROR_TABLES = {"envelope": ERRORS, "v2": V2_ERRORS}
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": idempotency.PATTERN},  # the rule api/web/idempotency.py applies
    "description": "1-255 printable ASCII characters, bare or in double quotes. The same key with the same request "
                   "within IDEMPOTENCY_TTL_SECONDS answers what the first answered (the same task id) and queues "
                   "nothing; with another request, 422. Scoped to the API key.",
}
CALLBACK_URL_PARAMETER = {
    "name": "Callback-URL", "in": "header", "required": False,
    "schema": {"type": "string", "format": "uri", "maxLength": 2048},
    "description": "Where to POST the task's answer (what GET /v1/tasks/{task_id} answers) when it ends, signed in "
                   "X-Iris-Signature; retried with backoff, at least once. Needs WEBHOOK_SECRET, an https URL (http "
                   "with WEBHOOK_ALLOW_HTTP) and a host in WEBHOOK_ALLOWED_HOSTS, else 400 (docs/api.md, Webhooks).",
}
REQUEST_ID_PARAMETER = {
    "name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "An id to trace the request by; echoed back when it is 1-128 of `A-Za-z0-9._:-`, else replaced.",
}


@dataclass(frozen=True)
class Operation:
    """One route's documentation: what it takes, what it answers on success, and which errors it can answer."""

    summary: str
    tag: str
    ok: type[BaseModel] | None
    status: int = 200
    request: dict[str, Any] | None = None
    errors: tuple[int, ...] = ()
    headers: tuple[str, ...] = ()
    links: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    media_type: str = JSON
    errors_as: Literal["envelope", "v2"] = "envelope"  # which body its errors answer: ERROR_TABLES
    parameters: tuple[str, ...] = ()  # header parameters it takes besides X-Request-ID: components' names


def v2_operation(summary: str, ok: type[BaseModel], errors: tuple[int, ...] = (), **extra: Any) -> Operation:
    """Describe an Open Inference Protocol route: tagged v2, its errors the protocol's error object."""
    return Operation(summary, "v2", ok, errors=errors, errors_as="v2", **extra)


CLASSIFY_ERRORS = (400, 413, 415, 500, 503)
V2_INFER_ERRORS = (400, 404, 413, 500, 503, 504)
V2_INFER_REQUEST = {"$ref": REF.format(model="InferenceRequest")}
V2_INFER_DESCRIPTION = (
    "The Open Inference Protocol's inference: one FP32 or FP64 tensor of shape [N, 4] (columns sepal_length, "
    "sepal_width, petal_length, petal_width), or four [N] tensors named by those columns; `data` flat or nested; "
    "Triton's binary tensor data for inputs too. Answers `label` (BYTES [N]) and `probabilities` (FP32 [N, 3]), "
    "or the `outputs` asked for.")
# Keyed by Flask endpoint: the one table a new route must join (tests/unit/api/openapi/test_spec.py checks).
OPERATIONS: dict[str, Operation] = {
    "classify.classify": Operation(
        "Classify one flower and wait for the answer", "classify", docs.ClassifyEnvelope,
        request={"$ref": REF.format(model="ClassifyPayload")}, errors=(*CLASSIFY_ERRORS, 504)),
    "classify.classify_async": Operation(
        "Queue one classification; poll the task", "classify", docs.AcceptedEnvelope, status=202,
        request={"$ref": REF.format(model="ClassifyPayload")}, errors=(*CLASSIFY_ERRORS, 409, 422),
        headers=("Location",), parameters=("IdempotencyKey", "CallbackUrl"),
        links={name: {"operationId": operation, "parameters": {"task_id": "$response.body#/data/task_id"}}
               for name, operation in (("PollTask", "task_status"), ("CancelTask", "cancel_task"))}),
    "classify.classify_batch": Operation(
        "Classify up to BATCH_MAX_ROWS flowers in one task", "classify", docs.BatchEnvelope,
        request={"$ref": REF.format(model="BatchPayload")}, errors=(*CLASSIFY_ERRORS, 409, 422, 504),
        parameters=("IdempotencyKey",)),
    "tasks.task_status": Operation(
        "Poll a task this service issued", "tasks", docs.TaskStatusEnvelope, errors=(404, 500, 503)),
    "tasks.cancel_task": Operation(
        "Cancel a task no worker has started", "tasks", docs.TaskStatusEnvelope, errors=(404, 409, 503),
        description="Answers the task's state, `REVOKED`: it will never run, whether or not a worker is up. A task "
                    "that started or finished, or that answers a timed-out synchronous request, is a 409."),
    "health.livez": Operation("Answer while the process is up", "health", docs.AliveEnvelope),
    "health.readyz": Operation(
        "Answer 200 when Redis and a worker with a loaded model answer", "health", docs.ReadyEnvelope, errors=(503,)),
    "mlflow_scoring.invocations": Operation(
        "Classify rows sent in MLflow's scoring format", "mlflow", docs.Predictions,
        request={"oneOf": [{"$ref": REF.format(model=model.__name__)} for model in docs.INVOCATION_FORMATS]},
        errors=(*CLASSIFY_ERRORS, 504),
        description="MLflow's scoring-server protocol: `dataframe_split`, `dataframe_records`, `instances` or "
                    "`inputs`, with no `params`. Answers MLflow's `{\"predictions\": [...]}`; errors answer the "
                    "error envelope."),
    "mlflow_scoring.ping": Operation(
        "Answer while the process is up (MLflow's health check)", "mlflow", None,
        description="The body is a bare newline, as MLflow's server answers."),
    "mlflow_scoring.version": Operation(
        "Name the service's version and the models the workers serve", "mlflow", docs.VersionInfo),
    "v2.server_live": v2_operation("Answer while the process is up", v2.ServerLive),
    "v2.server_ready": v2_operation("Answer 200 when /readyz would", v2.ServerReady, (503,)),
    "v2.server_metadata": v2_operation("Name the server, its version and extensions", v2.ServerMetadata),
    "v2.model_metadata": v2_operation("Describe the model's tensors and served versions", v2.ModelMetadata, (404,)),
    "v2.model_version_metadata": v2_operation(
        "Describe the model at a version the workers serve", v2.ModelMetadata, (404, 503)),
    "v2.model_ready": v2_operation("Answer 200 when a worker serving the model answers", v2.ModelReady, (404, 503)),
    "v2.model_version_ready": v2_operation(
        "Answer 200 when a worker serving this version answers", v2.ModelReady, (404, 503)),
    "v2.model_infer": v2_operation(
        "Classify a tensor of rows", v2.InferenceResponse, V2_INFER_ERRORS, request=V2_INFER_REQUEST,
        description=V2_INFER_DESCRIPTION),
    "v2.model_version_infer": v2_operation(
        "Classify a tensor of rows with a version the workers serve", v2.InferenceResponse, V2_INFER_ERRORS,
        request=V2_INFER_REQUEST, description=V2_INFER_DESCRIPTION),
    "metrics": Operation(
        "Prometheus metrics of this server's processes", "health", None, media_type="text/plain",
        description="Prometheus' text exposition format; the route exists only with METRICS on."),
}
# Every model the description refers to: requests validate as their models do, responses as they serialise.
MODELS: tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...] = (
    (ClassifyPayload, "validation"), (BatchPayload, "validation"),
    *((model, "validation") for model in docs.INVOCATION_FORMATS),
    (Prediction, "serialization"), (docs.ErrorEnvelope, "serialization"), (docs.TimeoutEnvelope, "serialization"),
    (v2.InferenceRequest, "validation"), (v2.V2Error, "serialization"),
    *((op.ok, "serialization") for op in OPERATIONS.values() if op.ok is not None),
)


def openapi_path(rule: str) -> str:
    """Turn a Flask rule (``/v1/tasks/<task_id>``) into an OpenAPI path (``/v1/tasks/{task_id}``)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _response(description: str, schema: type[BaseModel] | None, headers: tuple[str, ...] = (),
              links: dict[str, Any] | None = None, media_type: str = JSON) -> dict[str, Any]:
    content = {"schema": {"$ref": REF.format(model=schema.__name__)}} if schema is not None else {}
    if media_type != JSON:
        content = {"schema": {"type": "string"}}
    answer: dict[str, Any] = {"description": description, "content": {media_type: content},
                              "headers": {name: {"$ref": f"#/components/headers/{name}"}
                                          for name in ("X-Request-ID", *headers)}}
    if links:
        answer["links"] = links
    return answer


def path_parameters(model_name: str) -> dict[str, dict[str, Any]]:
    """Describe each path parameter by name: a task id, or the V2 routes' model name and version."""
    return {
        "task_id": {"schema": {"type": "string", "format": "uuid"}, "description": "The id a 202 or 504 answered."},
        "model_name": {"schema": {"type": "string", "enum": [model_name]},
                       "description": "The one model this server serves: IRIS_MODEL_NAME."},
        "model_version": {"schema": {"type": "string"},
                          "description": "A version the workers serve now (GET /v2/models/{model_name} lists them)."},
    }


def _operation(endpoint: str, op: Operation, path: str, methods: set[str], protected: bool,
               path_docs: dict[str, dict[str, Any]], unused: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Describe one route; a protected one (only when keys are set) documents its key and 401."""
    responses: dict[str, Any] = {str(op.status): _response(op.summary, op.ok, op.headers, op.links, op.media_type)}
    errors = sorted({*op.errors, *((401,) if protected else ())})
    table = ERROR_TABLES[op.errors_as]
    responses.update({str(status): {"$ref": f"#/components/responses/{table[status][0]}"} for status in errors})
    # apispec makes a name its $ref; ``unused``: header parameters this deployment refuses (settings turn them off)
    parameters: list[dict[str, Any] | str] = ["RequestId", *(p for p in op.parameters if p not in unused)]
    parameters += [{"name": name, "in": "path", "required": True, **path_docs[name]}
                   for name in re.findall(r"{([^}]+)}", path)]
    operation: dict[str, Any] = {"operationId": endpoint.rsplit(".", 1)[-1], "summary": op.summary,
                                 "tags": [op.tag], "parameters": parameters, "responses": responses}
    if op.description:
        operation["description"] = op.description
    if op.request is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": op.request}}}
    if protected:
        operation["security"] = SECURITY
    return {method.lower(): operation for method in methods - {"HEAD", "OPTIONS"}}


def build_spec(app: Flask) -> dict[str, Any]:
    """Describe every documented route of ``app``; routes with no entry in OPERATIONS are left out."""
    settings = app.extensions[SERVICES].settings
    protected = auth.protected_endpoints(app)
    spec = APISpec(
        title="Iris classifier", version=settings.tag, openapi_version=OPENAPI_VERSION,
        info={"description": "Classify iris flowers through a queue of Celery workers. Every answer but MLflow's "
                             "`/invocations`, `/ping` and `/version` and the Open Inference Protocol's `/v2/...` "
                             "(their own bodies) is the envelope `{message, data, error, version}`. With API_KEYS "
                             "set, `/v1/*`, `/invocations` and `/v2/models/*` need a key."},
    )
    _, schemas = models_json_schema(MODELS, ref_template=REF)
    for name, schema in schemas.get("$defs", {}).items():
        spec.components.schema(name, schema)
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    spec.components.parameter("RequestId", "header", REQUEST_ID_PARAMETER)
    spec.components.parameter("IdempotencyKey", "header", IDEMPOTENCY_KEY_PARAMETER)
    spec.components.parameter("CallbackUrl", "header", CALLBACK_URL_PARAMETER)
    for table in ERROR_TABLES.values():
        for name, description, model, headers in table.values():
            spec.components.response(name, _response(description, model, headers))
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("apiKeyHeader", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    path_docs = path_parameters(settings.iris_model_name)
    # Without WEBHOOK_SECRET every Callback-URL is a 400: the header is not one this deployment takes.
    unused = frozenset() if settings.webhook_secret is not None else frozenset({"CallbackUrl"})
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        op = OPERATIONS.get(rule.endpoint)
        if op is not None:
            path = openapi_path(rule.rule)
            spec.path(path=path, operations=_operation(rule.endpoint, op, path, set(rule.methods or ()),
                                                       rule.endpoint in protected, path_docs, unused))
    return spec.to_dict()


def spec_json(app: Flask) -> bytes:
    """Return the description as JSON bytes, built on the first call and kept for the app's life."""
    body = app.extensions.get(KEY)
    if body is None:  # two first requests may both build it: the same bytes, so either may win
        body = app.extensions[KEY] = orjson.dumps(build_spec(app))
    return body
