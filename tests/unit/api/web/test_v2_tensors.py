"""Open Inference Protocol V2 tensors: every accepted form gives the seed's rows, every bad one a clear 400."""

import struct
from typing import Any

import orjson
import pytest

from api.errors import PayloadTooLarge, ValidationFailed
from api.web.v2_tensors import LABEL, OUTPUTS, PROBABILITIES, build_outputs, parse_infer
from shared.schemas import FEATURES, LABELS

ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 2.6, 6.9, 2.3], [6.0, 2.9, 4.5, 1.5]]


def body(inputs: list[dict[str, Any]], **fields: Any) -> bytes:
    return orjson.dumps({"inputs": inputs, **fields})


def matrix(rows: list[list[Any]] = ROWS, datatype: str = "FP32", nested: bool = False, **extra: Any) -> dict[str, Any]:
    data = rows if nested else [value for row in rows for value in row]
    return {"name": "input", "shape": [len(rows), 4], "datatype": datatype, "data": data, **extra}


def named(rows: list[list[Any]] = ROWS, order: tuple[str, ...] = FEATURES, shape_tail: tuple[int, ...] = ()
          ) -> list[dict[str, Any]]:
    return [{"name": name, "shape": [len(rows), *shape_tail], "datatype": "FP64",
             "data": [row[FEATURES.index(name)] for row in rows]} for name in order]


def refused(raw: bytes, header: str | None = None, max_rows: int = 1000) -> str:
    with pytest.raises(ValidationFailed) as caught:
        parse_infer(raw, header, max_rows)
    assert caught.value.status == 400
    return caught.value.message


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("nested", [False, True])
def test_one_n_by_4_tensor_flat_or_nested_gives_the_rows_in_order(datatype: str, nested: bool) -> None:
    parsed = parse_infer(body([matrix(datatype=datatype, nested=nested)]), None, 1000)
    assert parsed.rows == ROWS and parsed.id is None and parsed.outputs == OUTPUTS


def test_four_named_tensors_in_any_order_give_the_rows_in_feature_order() -> None:
    parsed = parse_infer(body(named(order=tuple(reversed(FEATURES)))), None, 1000)
    assert parsed.rows == ROWS


@pytest.mark.parametrize("nested", [False, True])
def test_named_tensors_of_shape_n_by_1_are_accepted(nested: bool) -> None:
    inputs = named(shape_tail=(1,))
    if nested:
        for tensor in inputs:
            tensor["data"] = [[value] for value in tensor["data"]]
    assert parse_infer(body(inputs), None, 1000).rows == ROWS


def test_integers_are_numbers_and_the_id_and_requested_outputs_are_kept() -> None:
    parsed = parse_infer(body([matrix([[5, 3, 1, 1]])], id="42", parameters={"binary_data_output": True},
                              outputs=[{"name": PROBABILITIES, "parameters": {"binary_data": True}}]), None, 10)
    assert parsed.rows == [[5, 3, 1, 1]] and parsed.id == "42" and parsed.outputs == (PROBABILITIES,)


def test_binary_tensor_data_after_the_json_is_read_little_endian() -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP64",
                                       "parameters": {"binary_data_size": 96}}]})
    raw = header + struct.pack("<12d", *[value for row in ROWS for value in row])
    assert parse_infer(raw, str(len(header)), 1000).rows == ROWS


def test_binary_fp32_named_tensors_follow_the_json_in_input_order() -> None:
    inputs = [{"name": name, "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
              for name in FEATURES]
    header = orjson.dumps({"inputs": inputs})
    raw = header + b"".join(struct.pack("<f", value) for value in (5.0, 3.5, 1.5, 0.25))
    assert parse_infer(raw, str(len(header)), 1000).rows == [[5.0, 3.5, 1.5, 0.25]]


@pytest.mark.parametrize(("size", "extra", "message"), [
    (95, b"", "takes 96 bytes"), (96, b"\0" * 8, "8 bytes after the JSON belong to no input")])
def test_binary_sizes_that_disagree_with_the_shape_or_the_body_are_400s(size: int, extra: bytes,
                                                                        message: str) -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP64",
                                       "parameters": {"binary_data_size": size}}]})
    raw = header + struct.pack("<12d", *[value for row in ROWS for value in row]) + extra
    assert message in refused(raw, str(len(header)))


def test_binary_nan_is_refused_as_the_v1_schema_refuses_it() -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 16}}]})
    message = refused(header + struct.pack("<4f", 5.0, float("nan"), 1.0, 1.0), str(len(header)))
    assert "row 0, column sepal_width" in message and "nan" not in message.lower().replace("finite", "")


@pytest.mark.parametrize("header", ["x", "0", "100000"])
def test_a_bad_inference_header_content_length_is_a_400(header: str) -> None:
    assert "Inference-Header-Content-Length" in refused(body([matrix()]), header)


@pytest.mark.parametrize(("tensor", "message"), [
    ({"datatype": "INT64"}, "datatype must be FP32 or FP64; got INT64"),
    ({"datatype": "fp32"}, "datatype must be FP32 or FP64"),  # the protocol's strings are case-sensitive
    ({"datatype": "BYTES"}, "datatype must be FP32 or FP64"),
    ({"shape": [3, 5]}, "shape must be [N, 4]"),
    ({"shape": [12]}, "shape must be [N, 4]"),
    ({"shape": [3, 4, 1]}, "shape must be [N, 4]"),
    ({"shape": [3, -4]}, "shape must be a list of sizes"),
    ({"shape": [3, True]}, "shape must be a list of sizes"),
    ({"shape": [2, 4]}, "data must hold 8 values, flat or nested to shape [2, 4]"),
    ({"shape": [0, 4], "data": []}, "no rows"),
    ({"data": [[5.1, 3.5, 1.4, 0.2], [7.7, 2.6, 6.9], [6.0, 2.9, 4.5, 1.5, 1.0]]}, "data must hold 12 values"),
    ({"data": "5.1,3.5"}, "data must hold 12 values"),
    ({"extra": 1}, "unknown field(s) extra"),
    ({"parameters": [1]}, "parameters must be an object"),
])
def test_a_bad_tensor_is_a_400_that_says_what_is_wrong(tensor: dict[str, Any], message: str) -> None:
    assert message in refused(body([{**matrix(), **tensor}]))


def test_a_missing_data_field_is_a_400() -> None:
    tensor = matrix()
    del tensor["data"]
    assert "either in data or" in refused(body([tensor]))


@pytest.mark.parametrize(("rows", "where", "what"), [
    ([[5.1, 0, 1.4, 0.2]], "row 0, column sepal_width", "greater than 0"),
    ([[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, 101, 0.2]], "row 1, column petal_length", "less than or equal to 100"),
    ([[5.1, "3.5", 1.4, 0.2]], "row 0, column sepal_width", "valid number"),
    ([[5.1, 3.5, True, 0.2]], "row 0, column petal_length", "valid number"),
    ([[5.1, 3.5, 1.4, None]], "row 0, column petal_width", "valid number"),
])
def test_values_are_validated_as_the_v1_schema_validates_them(rows: list[list[Any]], where: str, what: str) -> None:
    message = refused(body([matrix(rows)]))
    assert where in message and what in message
    assert "3.5" not in message.replace("row", "")  # values are never echoed


def test_named_tensor_errors_name_the_feature_and_row() -> None:
    inputs = named()
    inputs[2]["data"][1] = -1.0
    assert "petal_length[1]: Input should be greater than 0" in refused(body(inputs))


@pytest.mark.parametrize(("inputs", "message"), [
    (named()[:3], "got 3 tensors"),
    ([*named()[:3], named()[0]], "each once"),
    ([*named()[:3], {**named()[3], "name": "petal_widht"}], "each once"),
    ([*named()[:3], {**named()[3], "shape": [2], "data": [1.0, 2.0]}], "same N"),
    ([{**tensor, "shape": [3, 2], "data": tensor["data"] * 2} for tensor in named()], "shape [N] (or [N, 1])"),
    ([], "inputs must be a list"),
])
def test_the_named_form_needs_each_feature_once_with_one_n(inputs: list[dict[str, Any]], message: str) -> None:
    assert message in refused(body(inputs))


def test_more_rows_than_batch_max_rows_is_a_413_before_the_data_is_read() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        parse_infer(body([{**matrix(), "data": []}]), None, 2)
    assert caught.value.status == 413 and "3 rows; at most 2" in caught.value.message


@pytest.mark.parametrize(("document", "message"), [
    (b"[1, 2]", "must be a JSON object"),
    (b"{", "not valid JSON"),
    (b'{"inputs": [], "model": "x"}', "unknown field(s) model"),
    (b'{"id": 42, "inputs": []}', "id must be a string"),
    (b'{"parameters": "fast", "inputs": []}', "parameters must be an object"),
])
def test_a_body_that_is_no_inference_request_is_a_400(document: bytes, message: str) -> None:
    assert message in refused(document)


@pytest.mark.parametrize(("outputs", "message"), [
    ([{"name": "scores"}], "unknown output; this model has label, probabilities"),
    ([{"name": LABEL}, {"name": LABEL}], "names label twice"),
    ([], "must be a list naming one or more"),
    ([{"name": LABEL, "shape": [1]}], "must be an object with a name"),
])
def test_a_bad_outputs_list_is_a_400(outputs: list[Any], message: str) -> None:
    assert message in refused(body([matrix()], outputs=outputs))


def test_outputs_are_labels_as_bytes_and_probabilities_as_fp32_in_label_order() -> None:
    answers = [{"pred_label": "Iris-virginica", "probabilities": {"Iris-virginica": 0.7, "Iris-setosa": 0.1,
                                                                  "Iris-versicolor": 0.2}},
               {"pred_label": "Iris-setosa", "probabilities": dict.fromkeys(LABELS, 1 / 3)}]
    label, probabilities = build_outputs(answers, OUTPUTS)
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["Iris-virginica", "Iris-setosa"]}
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [2, 3]
    assert probabilities["data"] == [0.1, 0.2, 0.7, 1 / 3, 1 / 3, 1 / 3]
    assert [output["name"] for output in build_outputs(answers, (PROBABILITIES,))] == [PROBABILITIES]


def test_a_long_or_unprintable_tensor_name_is_not_echoed_but_named_by_its_place() -> None:
    for name in ("x" * 65, "bad\nname"):
        message = refused(body([{**matrix([[5.1, 3.5, 1.4, 0.0]]), "name": name}]))
        assert message.endswith("inputs[0] row 0, column petal_width: Input should be greater than 0")
        assert name not in message
