"""Read Open Inference Protocol V2 inference requests into the seed's validated rows, and build the answer's output
tensors: pure, no Flask and no network.

A request carries its rows as either

- one FP32 or FP64 tensor of shape [N, 4], columns in FEATURES order, under any name (metadata calls it ``input``);
- or four tensors of shape [N] (or [N, 1]) named by FEATURES, in any order.

``data`` is flat (row-major) or nested to the tensor's shape, as the protocol allows; with Triton's binary tensor
extension (the ``Inference-Header-Content-Length`` header), an input may instead name ``binary_data_size`` bytes of
little-endian values appended after the JSON. Every row then validates as the seed's ClassifyPayload does, and
messages name tensors, rows and features, never values.
"""

import math
import sys
from array import array
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from api.errors import PayloadTooLarge, ValidationFailed
from shared.schemas import FEATURES, LABELS, rows_from_payloads

INPUT = "input"  # the one [N, 4] tensor's name in the metadata (any name is accepted)
LABEL, PROBABILITIES = "label", "probabilities"
OUTPUTS: tuple[str, ...] = (LABEL, PROBABILITIES)
DATATYPES = {"FP32": "f", "FP64": "d"}  # accepted input datatypes, by the array typecode their binary form reads as
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})
BINARY_SIZE = "binary_data_size"  # Triton's binary tensor extension: an input's bytes after the JSON


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: its id (if sent), its rows in FEATURES order, and the outputs to answer."""

    id: str | None
    rows: list[list[float]]
    outputs: tuple[str, ...]


def parse_infer(body: bytes, header_length: str | None, max_rows: int) -> InferRequest:
    """Decode an /infer body (JSON, or JSON then binary tensors when ``header_length`` is sent) into its rows."""
    document_bytes, binary = _split_binary(body, header_length)
    try:
        document = orjson.loads(document_bytes)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValidationFailed(f"the body must be a JSON object with inputs; got {_kind(document)}")
    unknown = sorted(set(document) - REQUEST_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown field(s) {', '.join(unknown)}; a request has id, parameters, inputs "
                               "and outputs")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ValidationFailed(f"id must be a string; got {_kind(request_id)}")
    _parameters(document.get("parameters"), "parameters")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ValidationFailed("inputs must be a list of one [N, 4] tensor or of four [N] tensors named "
                               f"{', '.join(FEATURES)}")
    tensors = [_tensor(item, index) for index, item in enumerate(inputs)]
    columns = _read_data(tensors, binary, max_rows)
    return InferRequest(request_id, _validate(columns, tensors), _requested(document.get("outputs")))


@dataclass
class _Tensor:
    """One input tensor as declared: its name, datatype, shape, and where its values are."""

    name: str
    where: str  # how messages name it: by its name when short and printable, else by its place
    datatype: str
    shape: list[int]
    data: Any
    binary_size: int | None


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Split the body at Inference-Header-Content-Length: the JSON before, the binary tensors after."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ValidationFailed("Inference-Header-Content-Length must be a number of bytes") from None
    if not 0 < length <= len(body):
        raise ValidationFailed(f"Inference-Header-Content-Length is {length}; the body holds {len(body)} bytes")
    return body[:length], body[length:]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    """Accept a parameters object (none are defined here, so every one is ignored); refuse anything else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(f"{where} must be an object; got {_kind(value)}")
    return value


def _tensor(item: Any, index: int) -> _Tensor:
    """Read one input tensor's declaration; its data is read later, once the form of the request is known."""
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise ValidationFailed(f"{where} must be an object with name, shape, datatype and data; got {_kind(item)}")
    unknown = sorted(set(item) - INPUT_FIELDS)
    if unknown:
        raise ValidationFailed(f"{where}: unknown field(s) {', '.join(unknown)}")
    name = item.get("name")
    if not isinstance(name, str):
        raise ValidationFailed(f"{where}.name must be a string")
    where = f"input {name!r}" if name.isprintable() and len(name) <= 64 else where
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ValidationFailed(f"{where}: datatype must be {' or '.join(DATATYPES)}"
                               + (f"; got {datatype}" if isinstance(datatype, str) and datatype.isalnum() else ""))
    shape = item.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape)):
        raise ValidationFailed(f"{where}: shape must be a list of sizes (integers >= 0)")
    size = _parameters(item.get("parameters"), f"{where}.parameters").get(BINARY_SIZE)
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ValidationFailed(f"{where}: parameters.{BINARY_SIZE} must be a number of bytes")
    if (size is None) == ("data" not in item):
        raise ValidationFailed(f"{where}: send its values either in data or, with Inference-Header-Content-Length, "
                               f"as parameters.{BINARY_SIZE} bytes after the JSON")
    return _Tensor(name, where, datatype, shape, item.get("data"), size)


def _read_data(tensors: list[_Tensor], binary: bytes, max_rows: int) -> list[list[Any]]:
    """Return the request's columns in FEATURES order, each with one value per row."""
    if len(tensors) == 1:
        tensor = tensors[0]
        if len(tensor.shape) != 2 or tensor.shape[1] != len(FEATURES):
            raise ValidationFailed(f"{tensor.where}: shape must be [N, {len(FEATURES)}] (columns "
                                   f"{', '.join(FEATURES)}); got {tensor.shape}")
        _row_count(tensor.shape[0], max_rows)
        values, end = _values(tensor, binary, 0)
        _all_read(binary, end)
        return [values[column::len(FEATURES)] for column in range(len(FEATURES))]
    names = [tensor.name for tensor in tensors]
    if sorted(names) != sorted(FEATURES):
        raise ValidationFailed(f"send one [N, {len(FEATURES)}] tensor, or {len(FEATURES)} tensors of shape [N] "
                               f"named {', '.join(FEATURES)}, each once; got {len(tensors)} tensors")
    shapes = {tuple(tensor.shape) for tensor in tensors}
    if len(shapes) != 1 or len(tensors[0].shape) not in (1, 2) or tensors[0].shape[1:] not in ([], [1]):
        raise ValidationFailed("the feature tensors must all have the shape [N] (or [N, 1]), with the same N")
    _row_count(tensors[0].shape[0], max_rows)
    by_name: dict[str, list[Any]] = {}
    offset = 0
    for tensor in tensors:  # binary inputs follow the JSON in the order the inputs are listed
        by_name[tensor.name], offset = _values(tensor, binary, offset)
    _all_read(binary, offset)
    return [by_name[name] for name in FEATURES]


def _all_read(binary: bytes, end: int) -> None:
    """Refuse bytes after the JSON that no input claimed: the sizes and the body disagree."""
    if end != len(binary):
        raise ValidationFailed(f"{len(binary) - end} bytes after the JSON belong to no input")


def _row_count(rows: int, max_rows: int) -> None:
    """Refuse an empty tensor, or more rows than one request may hold (BATCH_MAX_ROWS, as /v1/classify/batch)."""
    if rows == 0:
        raise ValidationFailed("the input holds no rows; send at least one")
    if rows > max_rows:
        raise PayloadTooLarge(f"{rows} rows; at most {max_rows} per request")


def _values(tensor: _Tensor, binary: bytes, offset: int) -> tuple[list[Any], int]:
    """Return the tensor's values, flat in row-major order, and where the next binary input begins."""
    count = math.prod(tensor.shape)
    if tensor.binary_size is None:
        return _flatten(tensor.data, tensor.shape, count, tensor.where), offset
    typecode = DATATYPES[tensor.datatype]
    width = array(typecode).itemsize
    if tensor.binary_size != count * width:
        raise ValidationFailed(f"{tensor.where}: {BINARY_SIZE} is {tensor.binary_size}; shape "
                               f"{tensor.shape} of {tensor.datatype} takes {count * width} bytes")
    end = offset + tensor.binary_size
    if end > len(binary):
        raise ValidationFailed(f"{tensor.where}: the body ends before its {tensor.binary_size} bytes")
    values = array(typecode, binary[offset:end])
    if sys.byteorder == "big":  # the extension's values are little-endian
        values.byteswap()
    return values.tolist(), end


def _flatten(data: Any, shape: list[int], count: int, where: str) -> list[Any]:
    """Return ``data`` flat: as sent when it is a flat list of ``count`` values, else nested exactly to ``shape``."""
    if isinstance(data, list) and len(data) == count and not any(isinstance(value, list) for value in data):
        return data
    flat: list[Any] = []
    if not _nested(data, shape, flat):
        raise ValidationFailed(f"{where}: data must hold {count} values, flat or nested to shape {shape}")
    return flat


def _nested(data: Any, shape: list[int], into: list[Any]) -> bool:
    """Append ``data``'s values to ``into`` if it nests exactly to ``shape``; say whether it did."""
    if not isinstance(data, list) or len(data) != shape[0]:
        return False
    if len(shape) == 1:
        if any(isinstance(value, list) for value in data):
            return False
        into.extend(data)
        return True
    return all(_nested(part, shape[1:], into) for part in data)


def _validate(columns: list[list[Any]], tensors: list[_Tensor]) -> list[list[float]]:
    """Validate each row as the seed's ClassifyPayload; the message names rows and features, never values."""
    records = [dict(zip(FEATURES, values, strict=True)) for values in zip(*columns, strict=True)]
    try:
        return rows_from_payloads(records)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        single = tensors[0].where if len(tensors) == 1 else None
        lines = [f"{len(errors)} invalid value{'s' if len(errors) != 1 else ''} in the inputs"]
        for error in errors[:20]:  # a 1,000-row table of bad values would otherwise answer a long page
            _, row, feature = (*error["loc"], None, None)[:3]
            where = f"{single} row {row}, column {feature}" if single is not None else f"{feature}[{row}]"
            lines.append(f"{where}: {error['msg']}")
        raise ValidationFailed("\n".join(lines)) from None


def _requested(value: Any) -> tuple[str, ...]:
    """Return the outputs the request names, in its order; all of them when it names none."""
    if value is None:
        return OUTPUTS
    if not isinstance(value, list) or not value:
        raise ValidationFailed(f"outputs, when sent, must be a list naming one or more of {', '.join(OUTPUTS)}")
    names: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - OUTPUT_FIELDS:
            raise ValidationFailed(f"outputs[{index}] must be an object with a name and optionally parameters")
        name = item.get("name")
        if name not in OUTPUTS:
            raise ValidationFailed(f"outputs[{index}]: unknown output; this model has {', '.join(OUTPUTS)}")
        if name in names:
            raise ValidationFailed(f"outputs names {name} twice")
        _parameters(item.get("parameters"), f"outputs[{index}].parameters")
        names.append(name)
    return tuple(names)


def build_outputs(answers: list[dict[str, Any]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Return the outputs ``names`` asks for: labels as BYTES [N], probabilities as FP32 [N, 3] in LABELS order."""
    outputs: list[dict[str, Any]] = []
    for name in names:
        if name == LABEL:
            outputs.append({"name": LABEL, "datatype": "BYTES", "shape": [len(answers)],
                            "data": [answer["pred_label"] for answer in answers]})
        else:
            outputs.append({"name": PROBABILITIES, "datatype": "FP32", "shape": [len(answers), len(LABELS)],
                            "data": [answer["probabilities"][label] for answer in answers for label in LABELS]})
    return outputs


def _kind(value: Any) -> str:
    """Name a JSON value's type without echoing it."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
