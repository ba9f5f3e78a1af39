"""Parse MLflow scoring-server JSON bodies into the seed's validated rows: pure, no Flask and no network.

The four formats of ``mlflow.pyfunc.scoring_server`` (MLflow 2 and 3), each into the same rows:

- ``dataframe_split``: ``{"columns": [...], "data": [[...], ...], "index": [...]}`` (index optional, ignored);
- ``dataframe_records``: ``[{...}, ...]``;
- ``instances`` and ``inputs``: a list of objects, a list of 4-number lists in FEATURES order, or a columns
  object ``{"sepal_length": [...], ...}`` (MLflow's parser takes all three under either key).

Every row then validates as the seed's ClassifyPayload does. Messages name fields and rows, never values.
"""

from typing import Any

import orjson
from pydantic import ValidationError

from shared.schemas import FEATURES, format_validation_error, rows_from_payloads

SPLIT, RECORDS, INSTANCES, INPUTS = "dataframe_split", "dataframe_records", "instances", "inputs"
FORMATS: tuple[str, ...] = (SPLIT, RECORDS, INSTANCES, INPUTS)
# MLflow's client adds "params" when given; the model takes none, so only an empty one is accepted.
PARAMS = "params"


class InvalidInput(ValueError):
    """The body is not a scoring request this service accepts; the message says why."""


class TooManyRows(ValueError):
    """The request holds more rows than one batch may."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} rows; at most {limit} per request")


def parse_invocation(body: bytes, max_rows: int) -> list[list[float]]:
    """Decode an /invocations body and return its validated rows (values in FEATURES order), in request order."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    name, value = _pick_format(document)
    records = _to_records(name, value)
    if not records:
        raise InvalidInput(f"{name} holds no rows")
    if len(records) > max_rows:
        raise TooManyRows(len(records), max_rows)
    try:
        return rows_from_payloads(records)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error(exc, title=f"{name} rows")) from None


def _pick_format(document: Any) -> tuple[str, Any]:
    """Return the one format key of the body and its value; refuse anything else at the top level."""
    expected = f"a JSON object with exactly one of the fields {', '.join(FORMATS)}"
    if not isinstance(document, dict):
        raise InvalidInput(f"the body must be {expected}; got {_kind(document)}")
    names = [key for key in document if key in FORMATS]
    if len(names) != 1:
        raise InvalidInput(f"the body must be {expected}; got {len(names)} of them")
    unknown = sorted(key for key in document if key not in FORMATS and key != PARAMS)
    if unknown:
        raise InvalidInput(f"unknown top-level field(s) {', '.join(unknown)}; the body must be {expected}")
    if document.get(PARAMS, {}) not in ({}, None):  # not just falsy: false, 0 and [] are not params either
        raise InvalidInput("this model takes no params; leave out params or send it empty ({} or null)")
    return names[0], document[names[0]]


def _to_records(name: str, value: Any) -> list[Any]:
    """Turn a format's value into one object per row; the rows' contents are validated later."""
    if name == SPLIT:
        return _split(value)
    if name == RECORDS:
        if not isinstance(value, list):
            raise InvalidInput(f"{RECORDS} must be a list of objects; got {_kind(value)}")
        return [_record(row, f"{RECORDS}[{index}]") for index, row in enumerate(value)]
    return _tensor(name, value)


def _split(value: Any) -> list[dict[str, Any]]:
    """Read pandas' split orient: named columns, positional rows, an optional index that is not used."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{SPLIT} must be an object with columns and data; got {_kind(value)}")
    extra = sorted(set(value) - {"columns", "data", "index"})
    if extra or "data" not in value or "columns" not in value:
        # MLflow lets columns default to 0..n-1, which no named signature accepts: they are required here.
        raise InvalidInput(f"{SPLIT} must have columns and data, and optionally index; "
                           f"got fields {', '.join(sorted(value)) or 'none'}")
    columns, data, index = value["columns"], value["data"], value.get("index")
    if not isinstance(columns, list) or not all(isinstance(column, str) for column in columns):
        raise InvalidInput(f"{SPLIT}.columns must be a list of column names")
    if len(set(columns)) != len(columns):
        raise InvalidInput(f"{SPLIT}.columns names a column twice")
    if not isinstance(data, list):
        raise InvalidInput(f"{SPLIT}.data must be a list of rows; got {_kind(data)}")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise InvalidInput(f"{SPLIT}.index must be a list with one entry per row of data")
    return [_positional(row, columns, f"{SPLIT}.data[{number}]") for number, row in enumerate(data)]


def _tensor(name: str, value: Any) -> list[dict[str, Any]]:
    """Read ``instances``/``inputs``: objects, 4-number lists in FEATURES order, or a columns object."""
    if isinstance(value, dict):
        return _columns(name, value)
    if not isinstance(value, list):
        raise InvalidInput(f"{name} must be a list of rows or an object of columns; got {_kind(value)}")
    if value and isinstance(value[0], dict):
        return [_record(row, f"{name}[{index}]") for index, row in enumerate(value)]
    return [_positional(row, FEATURES, f"{name}[{index}]") for index, row in enumerate(value)]


def _columns(name: str, value: dict[str, Any]) -> list[dict[str, Any]]:
    """Read ``{"sepal_length": [...], ...}``: one list per column, all of one length."""
    for column, values in value.items():
        if not isinstance(values, list):
            raise InvalidInput(f"{name}.{column} must be a list with one value per row; got {_kind(values)}")
    lengths = {len(values) for values in value.values()}
    if len(lengths) > 1:
        raise InvalidInput(f"the columns of {name} must all have the same number of values")
    count = lengths.pop() if lengths else 0
    return [{column: values[row] for column, values in value.items()} for row in range(count)]


def _record(row: Any, where: str) -> Any:
    """Return an object row as it is (validation names its fields), or refuse a row of another shape."""
    if not isinstance(row, dict):
        raise InvalidInput(f"{where} must be an object like the other rows; got {_kind(row)}")
    return row


def _positional(row: Any, columns: tuple[str, ...] | list[str], where: str) -> dict[str, Any]:
    """Name a list row's values by ``columns``; its length must match them."""
    if not isinstance(row, list):
        raise InvalidInput(f"{where} must be a list of {len(columns)} values; got {_kind(row)}")
    if len(row) != len(columns):
        raise InvalidInput(f"{where} has {len(row)} values; expected {len(columns)} ({', '.join(columns)})")
    return dict(zip(columns, row, strict=True))


def _kind(value: Any) -> str:
    """Name a JSON value's type without echoing it."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
