"""API keys: refused at start when set but unusable; required on every request routed to a protected endpoint."""

import hmac
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import create_app
from api.web.auth import (
    MAX_KEY_FILE_BYTES,
    MIN_KEY_LENGTH,
    ApiKeys,
    KeyConfigError,
    load_keys,
    parse_keys,
    presented_key,
    protected_endpoints,
)
from shared.logs import json_formatter
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE

DOWN = "redis://127.0.0.1:1/0"
FIRST, SECOND = "first-key-0123456789", "second-key-0123456789"
KEYS = f"{FIRST}, {SECOND}"
TASK = "/v1/tasks/0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab"
# Every endpoint the app serves, in three groups: a new route fails test_every_route_is_either_keyed_or_open
# until someone decides which group it belongs to.
KEYED = {"classify.classify", "classify.classify_async", "classify.classify_batch", "tasks.task_status",
         "tasks.cancel_task",
         "mlflow_scoring.invocations", "v2.model_metadata", "v2.model_version_metadata", "v2.model_ready",
         "v2.model_version_ready", "v2.model_infer", "v2.model_version_infer"}
METRICS_AND_DOCS = {"metrics", "docs.page", "docs.asset", "docs.openapi"}
OPEN = {"health.livez", "health.readyz", "mlflow_scoring.ping", "mlflow_scoring.version", "demo.page", "demo.asset",
        "v2.server_live", "v2.server_ready", "v2.server_metadata"}
# Each protected route, as (method, canonical path, body).
PROTECTED_ROUTES = [("POST", "/v1/classify", SEED_EXAMPLE), ("POST", "/v1/classify/async", SEED_EXAMPLE),
                    ("POST", "/v1/classify/batch", {"instances": [SEED_EXAMPLE]}),
                    ("POST", "/invocations", {"inputs": [[1, 2, 3, 4]]}), ("GET", TASK, None),
                    ("DELETE", TASK, None)]
# PATH_INFO as servers hand it over for spellings that route to /v1/classify (percent-escapes already decoded:
# /%2Fv1/classify arrives as //v1/classify, /%761/classify as /v1/classify).
ROUTED_SPELLINGS = ["/v1/classify", "//v1/classify", "///v1/classify", "////v1/classify"]


@pytest.fixture(autouse=True)
def _no_key_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let only what each test passes configure keys."""
    for name in ("API_KEYS", "API_KEYS_FILE", "PROTECT_METRICS_AND_DOCS"):
        monkeypatch.delenv(name, raising=False)


def settings(**values: object) -> Settings:
    return Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, **values)  # type: ignore[arg-type]


def build(api_keys: str | None = KEYS, **values: object) -> Flask:
    return create_app(settings(api_keys=SecretStr(api_keys) if api_keys is not None else None, **values))


@pytest.fixture
def client() -> FlaskClient:
    return build().test_client()


@pytest.fixture
def guarded_docs() -> FlaskClient:
    return build(protect_metrics_and_docs=True).test_client()


def send(client: FlaskClient, method: str, path: str, body: object = None, key: str | None = None,
         raw_path: str | None = None) -> tuple[int, Any]:
    """Send one request, spelled ``raw_path`` on the wire if given; return its status and JSON body."""
    headers = {"X-API-Key": key} if key is not None else {}
    overrides = {"PATH_INFO": raw_path} if raw_path is not None else {}
    resp = client.open(path, method=method, json=body, headers=headers, environ_overrides=overrides)
    return resp.status_code, resp.get_json(silent=True)


# --- parsing: set but unusable keys are refused, and no message quotes a key ---------------------------------------


def test_parse_keys_splits_on_commas_strips_spaces_and_drops_repeats() -> None:
    assert parse_keys(f" {FIRST},{SECOND} , {FIRST} ") == [FIRST, SECOND]


@pytest.mark.parametrize("value", ["", " ", " , ", ",", ",,,", "\t,\t"])
def test_a_blank_or_comma_only_api_keys_holds_no_key_and_is_refused(value: str) -> None:
    with pytest.raises(KeyConfigError, match="API_KEYS is set but holds no key"):
        load_keys(settings(api_keys=SecretStr(value)))


@pytest.mark.parametrize(("value", "problem"), [
    (f"{FIRST},,{SECOND}", "key 2 of 3 is empty"),
    (f"{FIRST},", "key 2 of 2 is empty"),
    ("first-key 0123456789", "key 1 of 1 contains whitespace"),
    ("first-key\t0123456789", "key 1 of 1 contains whitespace"),
    ("first-key\u00a00123456789", "key 1 of 1 contains whitespace"),
    (f"{FIRST},second-key\x000123456789", "key 2 of 2 contains a control character"),
    ("first-key\x1b[0m0123456789", "key 1 of 1 contains a control character"),
    ("first-key\x7f0123456789", "key 1 of 1 contains a control character"),
    ("first-kéy-0123456789", "key 1 of 1 contains a non-ASCII character"),
    ("short-key", "key 1 of 1 is 9 characters long; a key needs at least 16"),
])
def test_a_malformed_key_is_refused_with_its_number_and_never_quoted(value: str, problem: str) -> None:
    with pytest.raises(KeyConfigError) as refused:
        load_keys(settings(api_keys=SecretStr(value)))
    message = str(refused.value)
    assert problem in message and "\n" not in message
    for fragment in ("first-k", "second-k", "0123456789", "short-key"):
        assert fragment not in message


def test_the_minimum_length_is_sixteen_characters() -> None:
    assert MIN_KEY_LENGTH == 16
    assert parse_keys("x" * 16) == ["x" * 16]
    with pytest.raises(KeyConfigError, match="15 characters long"):
        parse_keys("x" * 15)


def test_printable_ascii_punctuation_is_allowed_in_a_key() -> None:
    key = "A-z_0.9~!@#$%^&*()+=[]{}|;:'\"<>/?`"
    assert parse_keys(key) == [key]


def test_without_keys_or_key_file_the_api_is_open() -> None:
    assert load_keys(settings()) == []
    app = build(None)
    assert protected_endpoints(app) == frozenset()
    assert app.test_client().post("/v1/classify", json=SEED_EXAMPLE).status_code == 503  # reached the queue


@pytest.mark.parametrize("value", ["", " , ", "short"])
def test_create_app_refuses_set_but_unusable_keys(value: str) -> None:
    with pytest.raises(KeyConfigError):
        build(value)


def test_api_keys_read_from_the_environment_empty_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "")
    with pytest.raises(KeyConfigError, match="holds no key"):
        load_keys(Settings())


def test_protecting_metrics_and_docs_without_any_key_is_refused() -> None:
    with pytest.raises(KeyConfigError, match="PROTECT_METRICS_AND_DOCS is on but no key is set"):
        load_keys(settings(protect_metrics_and_docs=True))


# --- the key file ------------------------------------------------------------------------------------------------


def test_a_key_file_holds_keys_separated_by_commas_or_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"\n{FIRST}\r\n\n  {SECOND} , third-key-0123456789\n\n")
    assert load_keys(settings(api_keys_file=str(path))) == [FIRST, SECOND, "third-key-0123456789"]


def test_a_key_file_with_a_byte_order_mark_still_reads_its_first_key(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"\xef\xbb\xbf" + FIRST.encode() + b"\n")
    assert load_keys(settings(api_keys_file=str(path))) == [FIRST]


def test_the_keys_of_a_key_file_protect_the_api(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{FIRST}\n{SECOND}\n")
    client = create_app(settings(api_keys_file=str(path))).test_client()
    assert client.post("/v1/classify", json=SEED_EXAMPLE).status_code == 401
    assert client.post("/v1/classify", json=SEED_EXAMPLE, headers={"X-API-Key": SECOND}).status_code == 503


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "holds no key"),
    (b"\n\n  \n", "holds no key"),
    (b",\n,\n", "holds no key"),
    (b"first-key 0123456789\n", "key 1 of 1 contains whitespace"),
    (b"first-key-0123456789,\nsecond-key-0123456789\n", "key 2 of 3 is empty"),
    (b"short\n", "is 5 characters long"),
    (b"first-key-\xff0123456789\n", "is not UTF-8 text"),
    (b"k" * (MAX_KEY_FILE_BYTES + 1), "is larger than 64 kB"),
])
def test_an_empty_or_malformed_key_file_is_refused_naming_the_file_and_no_key(tmp_path: Path, content: bytes,
                                                                              problem: str) -> None:
    path = tmp_path / "keys"
    path.write_bytes(content)
    with pytest.raises(KeyConfigError) as refused:
        load_keys(settings(api_keys_file=str(path)))
    message = str(refused.value)
    assert problem in message and str(path) in message and "\n" not in message
    assert "first-key" not in message and "0123456789" not in message and "\\xff" not in message


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match=r"API_KEYS_FILE: no such file: .*/absent"):
        load_keys(settings(api_keys_file=str(tmp_path / "absent")))


def test_a_key_file_that_cannot_be_read_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match=r"API_KEYS_FILE: cannot read .*: Is a directory"):
        load_keys(settings(api_keys_file=str(tmp_path)))


@pytest.mark.parametrize("path", ["", "  "])
def test_a_blank_api_keys_file_is_refused(path: str) -> None:
    with pytest.raises(KeyConfigError, match="API_KEYS_FILE is set but blank"):
        load_keys(settings(api_keys_file=path))


def test_api_keys_and_api_keys_file_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(FIRST)
    with pytest.raises(KeyConfigError, match="both API_KEYS and API_KEYS_FILE are set"):
        load_keys(settings(api_keys=SecretStr(SECOND), api_keys_file=str(path)))


# --- which endpoints need a key ----------------------------------------------------------------------------------


def test_every_route_is_either_keyed_or_open() -> None:
    app = build()
    assert {rule.endpoint for rule in app.url_map.iter_rules()} == KEYED | METRICS_AND_DOCS | OPEN


def test_the_v1_and_invocations_endpoints_need_a_key_and_metrics_and_docs_only_when_asked() -> None:
    assert protected_endpoints(build()) == KEYED
    assert protected_endpoints(build(protect_metrics_and_docs=True)) == KEYED | METRICS_AND_DOCS


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED_ROUTES)
def test_each_protected_route_without_a_key_is_a_401_envelope_naming_its_view(
        client: FlaskClient, method: str, path: str, body: object) -> None:
    resp = client.open(path, method=method, json=body)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    envelope = resp.get_json()
    assert envelope["message"] == "failed" and envelope["error"]["code"] == "401"
    assert envelope["error"]["raised"] == "Unauthorized" and resp.headers["X-Request-ID"]
    view = {"/v1/classify": "ApiClassify", "/v1/classify/async": "ApiClassifyAsync",
            "/v1/classify/batch": "ApiClassifyBatch", "/invocations": "ApiInvocations"}.get(path, "ApiTaskStatus")
    assert envelope["error"]["raisedOn"] == ("ApiCancelTask" if method == "DELETE" else view)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED_ROUTES)
def test_each_protected_route_with_the_key_reaches_its_view(client: FlaskClient, method: str, path: str,
                                                            body: object) -> None:
    status, _ = send(client, method, path, body, key=FIRST)
    assert status == 503  # past the key: the view answers that Redis is down in these tests


@pytest.mark.parametrize("raw_path", ROUTED_SPELLINGS)
def test_every_spelling_that_routes_to_classify_needs_a_key(client: FlaskClient, raw_path: str) -> None:
    status, body = send(client, "POST", "/", SEED_EXAMPLE, raw_path=raw_path)
    assert status == 401 and body is not None and body["error"]["raisedOn"] == "ApiClassify"
    assert send(client, "POST", "/", SEED_EXAMPLE, key=FIRST, raw_path=raw_path)[0] == 503


@pytest.mark.parametrize("path", ["/%2Fv1/classify", "/%2fv1/classify", "/v1%2Fclassify", "/%761/classify",
                                  "/%76%31%2F%63lassify"])
def test_percent_encoded_spellings_of_classify_need_a_key(client: FlaskClient, path: str) -> None:
    assert send(client, "POST", path, SEED_EXAMPLE)[0] == 401


@pytest.mark.parametrize("raw_path", ["//invocations", "//v1/classify/async", "//v1/classify/batch", f"/{TASK}"])
def test_double_slash_spellings_of_the_other_protected_routes_need_a_key(client: FlaskClient, raw_path: str) -> None:
    method, body = ("GET", None) if "tasks" in raw_path else ("POST", SEED_EXAMPLE)
    assert send(client, method, "/", body, raw_path=raw_path)[0] == 401


@pytest.mark.parametrize("raw_path", ["/v1//classify", "/v1/classify/", "/V1/Classify", "/v1/CLASSIFY",
                                      "/x/../v1/classify", "/./v1/classify", "/v1/./classify", "/v1/secret-route"])
@pytest.mark.parametrize("key", [None, FIRST])
def test_a_path_that_routes_nowhere_is_a_404_envelope_key_or_not(client: FlaskClient, raw_path: str,
                                                                  key: str | None) -> None:
    resp = client.post("/", json=SEED_EXAMPLE, headers={"X-API-Key": key} if key else {},
                       environ_overrides={"PATH_INFO": raw_path})
    assert resp.status_code == 404 and resp.get_json()["error"]["raised"] == "NotFound"
    assert "Location" not in resp.headers  # no redirect to a URL built from the Host header


@pytest.mark.parametrize("key", [None, FIRST])
def test_a_wrong_method_on_a_protected_path_is_a_405_key_or_not(client: FlaskClient, key: str | None) -> None:
    assert send(client, "GET", "/v1/classify", key=key)[0] == 405


def test_options_and_head_on_a_protected_route_need_a_key_too(client: FlaskClient) -> None:
    assert client.options("/v1/classify").status_code == 401
    assert client.head(TASK).status_code == 401
    assert client.options("/v1/classify", headers={"X-API-Key": FIRST}).status_code == 200


@pytest.mark.parametrize(("path", "status"), [("/livez", 200), ("/readyz", 503), ("/ping", 200), ("/version", 200),
                                              ("/", 200), ("/demo/demo.js", 200), ("/metrics", 200), ("/docs", 200),
                                              ("/openapi.json", 200), ("/docs/static/docs.js", 200)])
def test_open_routes_answer_without_a_key(client: FlaskClient, path: str, status: int) -> None:
    assert client.get(path).status_code == status  # /readyz: 503, not 401, as Redis is down here


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/openapi.json", "/docs/static/docs.js",
                                  "/docs/static/swagger-ui.css", "//metrics", "//openapi.json"])
def test_with_protect_metrics_and_docs_they_need_the_key(guarded_docs: FlaskClient, path: str) -> None:
    assert send(guarded_docs, "GET", "/", raw_path=path)[0] == 401
    assert send(guarded_docs, "GET", "/", key=SECOND, raw_path=path)[0] == 200


@pytest.mark.parametrize(("path", "status"), [("/livez", 200), ("/ping", 200), ("/version", 200), ("/", 200),
                                              ("/demo/demo.css", 200)])
def test_with_protect_metrics_and_docs_health_and_the_demo_page_stay_open(guarded_docs: FlaskClient, path: str,
                                                                         status: int) -> None:
    assert guarded_docs.get(path).status_code == status


# --- presenting and comparing keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": "Basic Zmlyc3Qta2V5LTEyMw=="}, {"X-API-Key": ""},
                                     {"Authorization": "Bearer "}, {"X-API-Key": f"{FIRST} , {SECOND}"},
                                     {"X-API-Key": FIRST[:-1]}, {"X-API-Key": FIRST + "0"}])
def test_a_missing_or_wrong_key_is_a_401(client: FlaskClient, headers: dict[str, str]) -> None:
    assert client.post("/v1/classify", json=SEED_EXAMPLE, headers=headers).status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {FIRST}"}, {"Authorization": f"bearer {SECOND}"},
                                     {"X-API-Key": SECOND}])
def test_a_right_key_passes_to_the_route(client: FlaskClient, headers: dict[str, str]) -> None:
    assert client.post("/v1/classify", json=SEED_EXAMPLE, headers=headers).status_code == 503  # Redis is down


def test_keys_are_compared_against_every_key_without_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(a) + len(b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = ApiKeys(["k1", "a-much-longer-key-2", "k3"])
    assert keys.accepts("k1") and not keys.accepts("k") and not keys.accepts(None)
    assert len(calls) == 9 and set(calls) == {64}  # three keys each time, all as 32-byte digests


def test_presented_key_prefers_the_bearer_token() -> None:
    assert presented_key("Bearer tok", "hdr") == "tok"
    assert presented_key("Basic xyz", "hdr") == "hdr"
    assert presented_key(None, None) is None


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_keys_never_appear_in_the_logs_or_the_settings_repr(client: FlaskClient, captured_logs: io.StringIO) -> None:
    client.post("/v1/classify", json=SEED_EXAMPLE, headers={"Authorization": f"Bearer {FIRST}"})
    client.post("/v1/classify", json=SEED_EXAMPLE, headers={"X-API-Key": f"{SECOND}x"})
    with pytest.raises(KeyConfigError):
        build(f"{FIRST},{SECOND},short")
    text = captured_logs.getvalue() + repr(Settings(api_keys=SecretStr(KEYS)))
    assert "first-key" not in text and "second-key" not in text
