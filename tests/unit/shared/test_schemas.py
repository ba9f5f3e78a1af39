"""The wire contract: what a payload may hold and how errors name the field."""

import json

import pytest
from pydantic import ValidationError

from shared.schemas import FEATURES, ClassifyPayload, format_validation_error, rows_from_payloads
from tests.helpers import SEED_EXAMPLE


def test_seed_example_is_valid_and_rows_follow_the_contract_order() -> None:
    assert ClassifyPayload.model_validate(SEED_EXAMPLE).row() == [7.7, 2.6, 6.9, 2.3]


def test_row_order_does_not_depend_on_the_clients_key_order() -> None:
    shuffled = json.dumps(dict(reversed(list(SEED_EXAMPLE.items()))))
    assert ClassifyPayload.model_validate_json(shuffled).row() == [SEED_EXAMPLE[f] for f in FEATURES]


@pytest.mark.parametrize(
    "field, value",
    [("sepal_length", "7.7"), ("sepal_width", True), ("petal_length", None), ("petal_width", 0),
     ("petal_width", -1.0), ("sepal_length", 100.5)],
)
def test_non_numbers_and_out_of_range_values_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        ClassifyPayload.model_validate({**SEED_EXAMPLE, field: value})
    assert field in format_validation_error(info.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_json_numbers_are_rejected(literal: str) -> None:
    body = json.dumps(SEED_EXAMPLE).replace("7.7", literal)
    with pytest.raises(ValidationError) as info:
        ClassifyPayload.model_validate_json(body)
    assert "sepal_length" in format_validation_error(info.value)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        ClassifyPayload.model_validate({**SEED_EXAMPLE, "colour": 1.0})
    assert "colour" in format_validation_error(info.value)


def test_missing_field_message_reads_like_the_seeds() -> None:
    payload = {k: v for k, v in SEED_EXAMPLE.items() if k != "sepal_length"}
    with pytest.raises(ValidationError) as info:
        ClassifyPayload.model_validate(payload)
    assert format_validation_error(info.value) == (
        "1 validation error for ClassifyPayload\nsepal_length\n  Field required [type=missing]"
    )


def test_batch_errors_name_the_row_index() -> None:
    with pytest.raises(ValidationError) as info:
        rows_from_payloads([SEED_EXAMPLE, SEED_EXAMPLE, {**SEED_EXAMPLE, "petal_width": "x"}])
    assert "instances.2.petal_width" in format_validation_error(info.value)


def test_validation_messages_do_not_echo_the_input() -> None:
    with pytest.raises(ValidationError) as info:
        ClassifyPayload.model_validate({**SEED_EXAMPLE, "sepal_length": "<script>"})
    assert "<script>" not in format_validation_error(info.value)
