"""The Open Inference Protocol V2 bodies that /openapi.json documents: read by api/openapi/spec.py only.

They mirror api/routes/v2.py's answers and what api/web/v2_tensors.py accepts; the routes never validate against
them. The request is as strict as the parser where JSON Schema can say it (closed objects, the two datatypes, at most
two dimensions); what it cannot (shape against data, the four named tensors) the parser answers with a 400.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import LABELS

Parameters = Annotated[dict[str, Any] | None, Field(
    None, description="Key/value parameters; none is defined for this model, so all are ignored.")]


class Closed(BaseModel):
    """A documented body with no other fields."""

    model_config = ConfigDict(extra="forbid")


class V2Error(Closed):
    """Every error's body under /v2: the protocol's error object (api/web/v2_errors.py)."""

    error: str = Field(description="What went wrong; a 504 names the task id and the /v1 URL to poll it.")


class ServerLive(Closed):
    """GET /v2/health/live."""

    live: Literal[True]


class ServerReady(Closed):
    """GET /v2/health/ready: the /readyz check."""

    ready: Literal[True]


class ModelReady(Closed):
    """GET /v2/models/{model_name}[/versions/{model_version}]/ready."""

    name: str
    ready: Literal[True]


class ServerMetadata(Closed):
    """GET /v2."""

    name: str = Field(examples=["iris-queue-serving"])
    version: str = Field(description="The service's TAG.")
    extensions: list[str] = Field(description="binary_tensor_data: Triton's binary inputs (outputs answer JSON).")


class MetadataTensor(Closed):
    """An input or output tensor of the model; -1 is the row count."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, str] | None = Field(None, description="The input's column order and accepted datatypes; "
                                                                "the probabilities' class order.")


class ModelMetadata(Closed):
    """GET /v2/models/{model_name}[/versions/{model_version}]."""

    name: str
    versions: list[str] = Field(description="The versions the workers serve now (empty while none answers).")
    platform: Literal["sklearn_skops"]
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


# A tensor's values: flat in row-major order, or nested to its shape (at most two dimensions here).
TensorData = Annotated[list[float | list[float]], Field(description="Numbers, flat or nested to the shape.")]


class RequestInput(Closed):
    """One input tensor: [N, 4] in FEATURES order under any name, or [N] (or [N, 1]) named by one feature."""

    name: str = Field(examples=["input"])
    shape: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=2, examples=[[1, 4]])
    datatype: Literal["FP32", "FP64"]
    parameters: Parameters
    data: TensorData = Field(examples=[[7.7, 2.6, 6.9, 2.3]])


class RequestOutput(Closed):
    """An output the client asks for."""

    name: Literal["label", "probabilities"]
    parameters: Parameters


class InferenceRequest(Closed):
    """POST /v2/models/{model_name}[/versions/{model_version}]/infer."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "42", "inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [7.7, 2.6, 6.9, 2.3]}]}]})

    id: str | None = Field(None, description="Echoed in the answer; when absent, the answer's id is the task id.")
    parameters: Parameters
    inputs: list[RequestInput] = Field(min_length=1, max_length=4)
    outputs: list[RequestOutput] | None = Field(None, min_length=1, description="The outputs to answer; all when "
                                                                               "absent.")


class LabelOutput(Closed):
    """The predicted class of each row."""

    name: Literal["label"]
    datatype: Literal["BYTES"]
    shape: list[int] = Field(min_length=1, max_length=1, description="[N]")
    data: list[str]


class ProbabilitiesOutput(Closed):
    """Each row's class probabilities, flat in row-major order."""

    name: Literal["probabilities"]
    datatype: Literal["FP32"]
    shape: list[int] = Field(min_length=2, max_length=2, description=f"[N, {len(LABELS)}]")
    data: list[float] = Field(description=f"Row by row, the classes in the order {', '.join(LABELS)}.")


class InferenceResponse(Closed):
    """The answer to an inference request."""

    model_name: str
    model_version: str = Field(description="The version of the worker that answered.")
    id: str = Field(description="The request's id, or else the task's.")
    outputs: list[LabelOutput | ProbabilitiesOutput]
