"""The Idempotency-Key header: bounded, scoped to its API key, and fingerprinting what the request asks."""

import re

import pytest
from flask import Flask

from api.errors import BadIdempotencyKey
from api.idempotency import IdempotencyKey
from api.web import auth
from api.web.idempotency import MAX_LENGTH, PATTERN, idempotency_key

KEY_A, KEY_B = "unit-idempotency-" + "a" * 16, "unit-idempotency-" + "b" * 16
BODY = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def _app(keys: list[str]) -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/v1/classify/async", "classify_async", lambda: "", methods=["POST"])
    app.add_url_rule("/v1/classify/batch", "classify_batch", lambda: "", methods=["POST"])
    auth.init_app(app, keys)
    return app


def _key(app: Flask, headers: dict[str, str], body: object = BODY,
         path: str = "/v1/classify/async") -> IdempotencyKey | None:
    with app.test_request_context(path, method="POST", headers=headers):
        app.preprocess_request()  # sets request.url_rule, as a routed request has it
        return idempotency_key("iris:idempotency:", body)


def test_no_header_is_no_key() -> None:
    assert _key(_app([]), {}) is None


@pytest.mark.parametrize("value", ["", "   ", " padded", "x" * (MAX_LENGTH + 1), '"' + "x" * (MAX_LENGTH + 1) + '"',
                                   "tab\tinside", '"esc\\"aped"', 'a"b', '""', "bell\x07", "caf\u00e9"])
def test_a_malformed_key_is_refused(value: str) -> None:
    with pytest.raises(BadIdempotencyKey) as raised:
        _key(_app([]), {"Idempotency-Key": value})
    assert raised.value.status == 400


def test_the_bare_and_the_quoted_spelling_are_one_key() -> None:
    app = _app([])
    assert _key(app, {"Idempotency-Key": "order 42"}) == _key(app, {"Idempotency-Key": '"order 42"'})


def test_the_published_pattern_is_the_rule() -> None:
    assert re.fullmatch(PATTERN, "k" * MAX_LENGTH) and re.fullmatch(PATTERN, f'" {"k" * (MAX_LENGTH - 1)}"')
    assert not re.fullmatch(PATTERN, "k" * (MAX_LENGTH + 1)) and not re.fullmatch(PATTERN, "k ")


def test_the_record_name_is_bounded_and_holds_neither_key() -> None:
    key = _key(_app([KEY_A]), {"Idempotency-Key": "k" * MAX_LENGTH, "X-API-Key": KEY_A})
    assert key is not None and len(key.record) == len("iris:idempotency:") + 64
    assert KEY_A not in key.record and "kkkk" not in key.record


def test_two_api_keys_get_two_records_for_one_idempotency_key() -> None:
    app = _app([KEY_A, KEY_B])
    mine = _key(app, {"Idempotency-Key": "same", "X-API-Key": KEY_A})
    theirs = _key(app, {"Idempotency-Key": "same", "Authorization": f"Bearer {KEY_B}"})
    again = _key(app, {"Idempotency-Key": "same", "Authorization": f"Bearer {KEY_A}"})
    assert mine is not None and theirs is not None and mine.record != theirs.record and mine == again


def test_the_fingerprint_changes_with_the_body_route_or_callback_but_not_key_order() -> None:
    app = _app([])
    headers = {"Idempotency-Key": "same"}
    base, reordered = _key(app, headers), _key(app, headers, dict(reversed(BODY.items())))
    assert base is not None and base == reordered
    changed = [_key(app, headers, {**BODY, "petal_width": 0.3}),
               _key(app, headers, path="/v1/classify/batch"),
               _key(app, {**headers, "Callback-URL": "https://hooks.example.com/"})]
    assert all(key is not None and key.record == base.record and key.fingerprint != base.fingerprint
               for key in changed)
