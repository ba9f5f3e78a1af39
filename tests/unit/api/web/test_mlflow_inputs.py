"""MLflow scoring bodies: every format gives the seed's rows in order, and every bad body a 400-worthy message."""

import json
from typing import Any

import pytest

from api.web.mlflow_inputs import InvalidInput, TooManyRows, parse_invocation
from shared.schemas import FEATURES

ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 2.6, 6.9, 2.3], [6.0, 2.9, 4.5, 1.5]]
EXPECTED = ROWS  # validated, each row's values in FEATURES order
RECORDS = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
SHUFFLED = ["petal_width", "sepal_length", "petal_length", "sepal_width"]  # any column order is fine


def parse(body: Any, max_rows: int = 1000) -> list[list[float]]:
    return parse_invocation(json.dumps(body).encode(), max_rows)


def refusal(body: Any, max_rows: int = 1000) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse(body, max_rows)
    return str(caught.value)


def columns_of(order: list[str]) -> dict[str, list[float]]:
    return {name: [row[FEATURES.index(name)] for row in ROWS] for name in order}


@pytest.mark.parametrize("body", [
    {"dataframe_split": {"columns": list(FEATURES), "data": ROWS}},
    {"dataframe_split": {"columns": list(FEATURES), "data": ROWS, "index": [0, 1, 2]}},
    {"dataframe_split": {"columns": SHUFFLED, "data": [[r[FEATURES.index(c)] for c in SHUFFLED] for r in ROWS]}},
    {"dataframe_records": RECORDS},
    {"dataframe_records": [{name: rec[name] for name in SHUFFLED} for rec in RECORDS]},
    {"instances": RECORDS},
    {"instances": ROWS},
    {"instances": columns_of(list(FEATURES))},
    {"inputs": RECORDS},
    {"inputs": ROWS},
    {"inputs": columns_of(SHUFFLED)},
    {"inputs": ROWS, "params": {}},
    {"inputs": ROWS, "params": None},
], ids=["split", "split-index", "split-shuffled", "records", "records-shuffled", "instances-records",
        "instances-lists", "instances-columns", "inputs-records", "inputs-lists", "inputs-columns-shuffled",
        "empty-params", "null-params"])
def test_every_format_gives_the_same_rows_in_request_order(body: dict[str, Any]) -> None:
    assert parse(body) == EXPECTED


def test_rows_come_back_in_features_order_whatever_the_columns_order() -> None:
    [row] = parse({"dataframe_split": {"columns": SHUFFLED, "data": [[0.2, 5.1, 1.4, 3.5]]}})
    assert row == ROWS[0]


def test_integers_are_measurements_as_in_the_seed_contract() -> None:
    [row] = parse({"inputs": [[5, 3, 1, 1]]})
    assert row == [5.0, 3.0, 1.0, 1.0] and all(isinstance(value, float) for value in row)


@pytest.mark.parametrize(("body", "words"), [
    ([RECORDS[0]], "JSON object with exactly one of the fields"),
    ("inputs", "got a string"),
    ({}, "got 0 of them"),
    ({"inputs": ROWS, "instances": ROWS}, "got 2 of them"),
    ({"inputs": ROWS, "extra": 1}, "unknown top-level field(s) extra"),
    ({"inputs": ROWS, "params": {"top_k": 1}}, "takes no params"),
    ({"inputs": ROWS, "params": False}, "takes no params"),  # schemathesis found falsy non-objects accepted
    ({"dataframe_split": ROWS}, "dataframe_split must be an object"),
    ({"dataframe_split": {"data": ROWS}}, "must have columns and data"),
    ({"dataframe_split": {"columns": list(FEATURES), "data": ROWS, "dtype": "x"}}, "must have columns and data"),
    ({"dataframe_split": {"columns": "sepal_length", "data": ROWS}}, "columns must be a list of column names"),
    ({"dataframe_split": {"columns": [1, 2, 3, 4], "data": ROWS}}, "columns must be a list of column names"),
    ({"dataframe_split": {"columns": [*FEATURES[:3], FEATURES[0]], "data": ROWS}}, "names a column twice"),
    ({"dataframe_split": {"columns": list(FEATURES), "data": RECORDS[0]}}, "data must be a list of rows"),
    ({"dataframe_split": {"columns": list(FEATURES), "data": ROWS, "index": [0]}}, "one entry per row"),
    ({"dataframe_split": {"columns": list(FEATURES), "data": [ROWS[0], ROWS[1][:3]]}},
     "dataframe_split.data[1] has 3 values; expected 4"),
    ({"dataframe_records": RECORDS[0]}, "dataframe_records must be a list of objects; got an object"),
    ({"dataframe_records": [RECORDS[0], ROWS[1]]}, "dataframe_records[1] must be an object"),
    ({"instances": [RECORDS[0], ROWS[1]]}, "instances[1] must be an object"),
    ({"inputs": [ROWS[0], RECORDS[1]]}, "inputs[1] must be a list of 4 values; got an object"),
    ({"inputs": [ROWS[0], [1.0, 2.0, 3.0, 4.0, 5.0]]}, "inputs[1] has 5 values; expected 4"),
    ({"inputs": [5.1, 3.5, 1.4, 0.2]}, "inputs[0] must be a list of 4 values; got a number"),
    ({"inputs": 5.1}, "inputs must be a list of rows or an object of columns"),
    ({"inputs": {"sepal_length": 5.1}}, "inputs.sepal_length must be a list"),
    ({"inputs": {**columns_of(list(FEATURES)), "petal_width": [0.2]}}, "same number of values"),
    ({"inputs": []}, "inputs holds no rows"),
    ({"dataframe_split": {"columns": list(FEATURES), "data": []}}, "dataframe_split holds no rows"),
])
def test_bad_shapes_are_refused_with_a_message_naming_the_place(body: Any, words: str) -> None:
    assert words in refusal(body)


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_invocation(b"sepal_length,sepal_width\n5.1,3.5", 1000)


@pytest.mark.parametrize(("value", "kind"), [("5.1", "float_type"), (True, "float_type"), (None, "float_type"),
                                             (0, "greater_than"), (-1.0, "greater_than"), (100.5, "less_than_equal")])
def test_wrong_types_and_out_of_range_values_fail_as_the_seed_contract_does(value: Any, kind: str) -> None:
    rows = [list(ROWS[0]), [*ROWS[1][:2], value, ROWS[1][3]]]
    message = refusal({"inputs": rows})
    assert "instances.1.petal_length" in message and f"type={kind}" in message and "inputs rows" in message


def test_messages_name_the_row_and_field_but_never_echo_the_value() -> None:
    message = refusal({"dataframe_records": [RECORDS[0], {**RECORDS[1], "sepal_width": -42.4242}]})
    assert "instances.1.sepal_width" in message and "42.4242" not in message


def test_unknown_and_missing_columns_are_refused_by_name() -> None:
    message = refusal({"dataframe_split": {"columns": [*FEATURES[:3], "petal_colour"], "data": [ROWS[0]]}})
    assert "instances.0.petal_colour" in message and "extra_forbidden" in message
    assert "instances.0.petal_width" in message and "missing" in message


def test_unknown_fields_of_records_are_refused_too() -> None:
    message = refusal({"dataframe_records": [{**RECORDS[0], "colour": 1.0}]})
    assert "instances.0.colour" in message and "extra_forbidden" in message


def test_non_finite_numbers_are_not_json() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_invocation(b'{"inputs": [[NaN, 1, 1, 1]]}', 1000)


def test_more_rows_than_the_limit_are_too_many_and_the_limit_itself_is_fine() -> None:
    assert len(parse({"inputs": ROWS}, max_rows=3)) == 3
    with pytest.raises(TooManyRows, match="3 rows; at most 2 per request"):
        parse({"inputs": ROWS}, max_rows=2)
