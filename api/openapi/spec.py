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
from api.web import auth
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
          "the values), or is not JSON.", docs.ErrorEnvelope, ()),
    401: ("Unauthorized", "No API key, or a wrong one: send `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
          docs.ErrorEnvelope, ("WWW-Authenticate",)),
    404: ("NotFound", "No such task: never issued by this service, expired, or not a UUID.", docs.ErrorEnvelope, ()),
    413: ("PayloadTooLarge", "More rows than BATCH_MAX_ROWS, or a body over the size limit.", docs.ErrorEnvelope, ()),
    415: ("UnsupportedMediaType", "The body is not sent as `Content-Type: application/json` (UTF-8).",
          docs.ErrorEnvelope, ()),
    500: ("InternalError", "A worker could not classify the request (`TaskFailed`, `data` holds its `task_id`), or "
          "an unexpected error (`data` is null; the message names the request id).", docs.ErrorEnvelope, ()),
    503: ("Unavailable", "Nothing was queued: Redis does not answer (`QueueUnavailable`), QUEUE_MAX_LENGTH tasks "
          "wait (`QueueFull`) or no worker with a model answers (`NoWorkers`). Retry after `Retry-After` seconds.",
          docs.ErrorEnvelope, ("Retry-After",)),
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


CLASSIFY_ERRORS = (400, 413, 415, 500, 503)
# Keyed by Flask endpoint: the one table a new route must join (tests/unit/api/openapi/test_spec.py checks).
OPERATIONS: dict[str, Operation] = {
    "classify.classify": Operation(
        "Classify one flower and wait for the answer", "classify", docs.ClassifyEnvelope,
        request={"$ref": REF.format(model="ClassifyPayload")}, errors=(*CLASSIFY_ERRORS, 504)),
    "classify.classify_async": Operation(
        "Queue one classification; poll the task", "classify", docs.AcceptedEnvelope, status=202,
        request={"$ref": REF.format(model="ClassifyPayload")}, errors=CLASSIFY_ERRORS, headers=("Location",),
        links={"PollTask": {"operationId": "task_status", "parameters": {"task_id": "$response.body#/data/task_id"}}}),
    "classify.classify_batch": Operation(
        "Classify up to BATCH_MAX_ROWS flowers in one task", "classify", docs.BatchEnvelope,
        request={"$ref": REF.format(model="BatchPayload")}, errors=(*CLASSIFY_ERRORS, 504)),
    "tasks.task_status": Operation(
        "Poll a task this service issued", "tasks", docs.TaskStatusEnvelope, errors=(404, 500, 503)),
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
    "metrics": Operation(
        "Prometheus metrics of this server's processes", "health", None, media_type="text/plain",
        description="Prometheus' text exposition format; the route exists only with METRICS on."),
}
# Every model the description refers to: requests validate as their models do, responses as they serialise.
MODELS: tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...] = (
    (ClassifyPayload, "validation"), (BatchPayload, "validation"),
    *((model, "validation") for model in docs.INVOCATION_FORMATS),
    (Prediction, "serialization"), (docs.ErrorEnvelope, "serialization"), (docs.TimeoutEnvelope, "serialization"),
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


def _operation(endpoint: str, op: Operation, path: str, methods: set[str], protected: bool) -> dict[str, Any]:
    """Describe one route; a protected one (only when keys are set) documents its key and 401."""
    responses: dict[str, Any] = {str(op.status): _response(op.summary, op.ok, op.headers, op.links, op.media_type)}
    errors = sorted({*op.errors, *((401,) if protected else ())})
    responses.update({str(status): {"$ref": f"#/components/responses/{ERRORS[status][0]}"} for status in errors})
    parameters: list[dict[str, Any] | str] = ["RequestId"]  # apispec turns a component name into its $ref
    parameters += [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
                    "description": "The id a 202 or 504 answered."} for name in re.findall(r"{([^}]+)}", path)]
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
                             "`/invocations`, `/ping` and `/version` is the envelope `{message, data, error, "
                             "version}`. With API_KEYS set, `/v1/*` and `/invocations` need a key."},
    )
    _, schemas = models_json_schema(MODELS, ref_template=REF)
    for name, schema in schemas.get("$defs", {}).items():
        spec.components.schema(name, schema)
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    spec.components.parameter("RequestId", "header", REQUEST_ID_PARAMETER)
    for name, description, model, headers in ERRORS.values():
        spec.components.response(name, _response(description, model, headers))
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("apiKeyHeader", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        op = OPERATIONS.get(rule.endpoint)
        if op is not None:
            path = openapi_path(rule.rule)
            spec.path(path=path, operations=_operation(rule.endpoint, op, path, set(rule.methods or ()),
                                                       rule.endpoint in protected))
    return spec.to_dict()


def spec_json(app: Flask) -> bytes:
    """Return the description as JSON bytes, built on the first call and kept for the app's life."""
    body = app.extensions.get(KEY)
    if body is None:  # two first requests may both build it: the same bytes, so either may win
        body = app.extensions[KEY] = orjson.dumps(build_spec(app))
    return body
