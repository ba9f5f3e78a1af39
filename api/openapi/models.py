"""The response bodies and MLflow request formats that /openapi.json documents: read by api/openapi/spec.py only.

Routes never validate against these: they answer dicts through api/web/envelope.py, so the hot path keeps its one
``model_validate_json`` of the request. Each model mirrors the code that builds the answer, named in its docstring.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import FEATURES, Centimetres, ClassifyPayload, Prediction

# The contract's FEATURES as a type (a unit test keeps the two equal).
Feature = Literal["sepal_length", "sepal_width", "petal_length", "petal_width"]
# One row as four measurements in FEATURES order.
PositionalRow = Annotated[list[Centimetres], Field(min_length=len(FEATURES), max_length=len(FEATURES))]
Rows = Field(min_length=1, description="At least one row; at most BATCH_MAX_ROWS (else 413).")
TaskId = Annotated[str, Field(description="The task's id, a UUID.", examples=["3f1c9a4e-7a51-4c1e-9c43-0f3b1d2e5a77"])]


class Closed(BaseModel):
    """A documented body with no other fields."""

    model_config = ConfigDict(extra="forbid")


class ClassifyResult(Prediction):
    """``data`` of a sync classify (api/routes/classify.py: the worker's prediction plus its task id)."""

    model_config = ConfigDict(extra="forbid")

    task_id: TaskId


class AcceptedTask(Closed):
    """``data`` of a 202 (and of a 504): where to poll the queued task."""

    task_id: TaskId
    status: Literal["PENDING"]
    status_url: str = Field(description="GET this path for the task's state; also sent as the Location header.")


class TaskError(Closed):
    """Why a task failed or was revoked."""

    raised: str = Field(description="The exception's class name.")
    message: str


class TaskStatus(Closed):
    """``data`` of GET /v1/tasks/{task_id} (api/service.py ``status``)."""

    task_id: TaskId
    status: str = Field(description="Celery's state: PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED.",
                        examples=["SUCCESS"])
    result: Prediction | list[Prediction] | None = Field(
        description="On SUCCESS: the prediction (a list of them for a batch task that timed out); else null.")
    error: TaskError | None = Field(description="On FAILURE or REVOKED: what went wrong; else null.")


class Alive(Closed):
    """``data`` of GET /livez."""

    status: Literal["alive"]


class WorkerModel(BaseModel):
    """What a worker reports about the model it serves (worker/app.py ``_info``); more fields may follow."""

    model_config = ConfigDict(extra="allow")

    model_name: str
    model_version: str
    model_run_id: str


class ServedVersions(Closed):
    """The versions the answering workers serve, by role (docs/model-lifecycle.md, "Shadowing a challenger")."""

    champion: list[str] = Field(description="The versions answering requests (two during a live swap).")
    challenger: list[str] = Field(description="The versions shadowing them; empty when none is loaded.")


class Ready(Closed):
    """``data`` of GET /readyz (api/broker/readiness.py ``Readiness.check``)."""

    status: Literal["ready"]
    workers: dict[str, WorkerModel] = Field(description="Each answering worker's name and model.")
    models: ServedVersions
    queue_depth: int = Field(ge=0, description="Task messages waiting in both queues together (QUEUE_MAX_LENGTH "
                                               "bounds it).")
    queue_depths: dict[str, int] = Field(description="Task messages waiting in each queue: iris and iris.rows.")


class ErrorDetail(Closed):
    """The error envelope's ``error`` (api/web/envelope.py ``failure``)."""

    raised: str = Field(description="The error's name, e.g. ValidationError, QueueFull, Timeout.")
    raisedOn: str = Field(description="The view that failed, e.g. ApiClassify.")  # the seed's camelCase
    message: str
    code: str = Field(pattern=r"^[45][0-9]{2}$", description="The HTTP status, as a string.")


class ErrorEnvelope(Closed):
    """Every error's body: the seed's envelope."""

    message: Literal["failed"]
    data: Any = Field(description="null, or what the client needs: TaskFailed's {task_id}.")
    error: ErrorDetail
    version: str = Field(description="The service's TAG.")


class TimeoutEnvelope(ErrorEnvelope):
    """A 504: the task stays queued; ``data`` says where to poll it."""

    data: AcceptedTask


class Success(Closed):
    """Fields every success envelope shares."""

    message: Literal["success"]
    error: None
    version: str = Field(description="The service's TAG.")


class ClassifyEnvelope(Success):
    data: ClassifyResult


class AcceptedEnvelope(Success):
    data: AcceptedTask


class BatchEnvelope(Success):
    data: list[Prediction] = Field(description="One prediction per instance, in request order.")


class TaskStatusEnvelope(Success):
    data: TaskStatus


class AliveEnvelope(Success):
    data: Alive


class ReadyEnvelope(Success):
    data: Ready


class WorkerIdentity(Closed):
    """A worker's model on GET /version."""

    model_name: str | None
    model_version: str | None
    model_run_id: str | None


class VersionInfo(Closed):
    """GET /version (api/routes/mlflow_scoring.py ``version``)."""

    service_version: str = Field(description="The service's TAG.")
    model_versions: list[str] | None = Field(description="The versions the workers serve; null when none answers.")
    workers: dict[str, WorkerIdentity]


class Predictions(Closed):
    """POST /invocations' answer: MLflow's body, one label per row in request order."""

    predictions: list[str] = Field(examples=[["Iris-virginica"]])


class DataframeSplit(Closed):
    """pandas' ``split`` orient: the four columns by name, in any order, and rows of values in that order."""

    columns: list[Feature] = Field(min_length=len(FEATURES), max_length=len(FEATURES), json_schema_extra={
        "uniqueItems": True})
    data: list[PositionalRow] = Rows
    index: list[Any] | None = Field(None, description="Ignored; when sent, one entry per row of data.")


class ColumnsObject(Closed):
    """Columns by name, each a list with one value per row; all four of one length."""

    sepal_length: list[Centimetres] = Rows
    sepal_width: list[Centimetres] = Rows
    petal_length: list[Centimetres] = Rows
    petal_width: list[Centimetres] = Rows


# instances and inputs take the same three shapes (MLflow's tensor input).
TensorInput = Annotated[list[ClassifyPayload], Rows] | Annotated[list[PositionalRow], Rows] | ColumnsObject
NoParams = Field(None, description="The model takes no params: leave it out or send it empty.")
EmptyParams = Annotated[dict[str, Any], Field(max_length=0)]


class SplitRequest(Closed):
    dataframe_split: DataframeSplit
    params: EmptyParams | None = NoParams


class RecordsRequest(Closed):
    dataframe_records: list[ClassifyPayload] = Rows
    params: EmptyParams | None = NoParams


class InstancesRequest(Closed):
    instances: Annotated[TensorInput, Field(description="Rows as objects, as lists in FEATURES order, or columns.")]
    params: EmptyParams | None = NoParams


class InputsRequest(Closed):
    inputs: Annotated[TensorInput, Field(description="As instances.")]
    params: EmptyParams | None = NoParams


INVOCATION_FORMATS: tuple[type[BaseModel], ...] = (SplitRequest, RecordsRequest, InstancesRequest, InputsRequest)
