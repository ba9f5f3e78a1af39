"""Pydantic schemas of the wire contract: request payloads and predictions."""

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FEATURES: tuple[str, ...] = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABELS: tuple[str, ...] = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")

# A measurement in centimetres: a finite JSON number (strict: no strings, booleans or null), 0 < x <= 100.
Centimetres = Annotated[float, Field(strict=True, gt=0, le=100, allow_inf_nan=False)]


class ClassifyPayload(BaseModel):
    """The seed's request body: exactly the four measurements of one flower."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={
        "examples": [{"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}]
    })

    sepal_length: Centimetres
    sepal_width: Centimetres
    petal_length: Centimetres
    petal_width: Centimetres

    def row(self) -> list[float]:
        """Return the features in the canonical order of FEATURES, whatever the client's key order."""
        return [self.sepal_length, self.sepal_width, self.petal_length, self.petal_width]


class BatchPayload(BaseModel):
    """A batch request: rows answered in order."""

    model_config = ConfigDict(extra="forbid")

    instances: list[ClassifyPayload] = Field(min_length=1)


class Prediction(BaseModel):
    """What a worker answers for one row."""

    pred_label: str
    pred_confidence: float
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    model_run_id: str


def format_validation_error(exc: ValidationError, title: str | None = None) -> str:
    """Describe a pydantic error like the seed did, naming each field, without echoing the input."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    count = len(errors)
    lines = [f"{count} validation error{'s' if count != 1 else ''} for {title or exc.title}"]
    for err in errors:
        loc = ".".join(str(part) for part in err["loc"]) or "body"
        lines.append(f"{loc}\n  {err['msg']} [type={err['type']}]")
    return "\n".join(lines)


def rows_from_payloads(payloads: Iterable[Mapping[str, Any] | ClassifyPayload]) -> list[list[float]]:
    """Validate payloads and return their rows in FEATURES order; errors name the row index."""
    validated = BatchPayload.model_validate({"instances": list(payloads)})
    return [item.row() for item in validated.instances]
