"""/openapi.json documents every API route from the pydantic models; /docs is Swagger UI served with no CDN."""

import re
import typing
from typing import Any
from urllib.parse import urljoin

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import create_app
from api.openapi import spec as openapi
from api.openapi.models import Feature
from shared.schemas import FEATURES, BatchPayload, ClassifyPayload
from shared.settings import Settings

DOWN = "redis://127.0.0.1:1/0"


def _app(**settings: Any) -> Flask:
    return create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, **settings))


@pytest.fixture
def app() -> Flask:
    return _app()


@pytest.fixture
def spec(app: Flask) -> dict[str, Any]:
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body: dict[str, Any] = resp.get_json()
    return body


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = spec["components"][section][name]
    return node


def test_the_spec_documents_every_route_of_the_app_but_the_pages(app: Flask, spec: dict[str, Any]) -> None:
    """A route added without an entry in api/openapi/spec.py's OPERATIONS fails here."""
    routed: dict[str, set[str]] = {}  # one path may have a rule per method (GET and DELETE /v1/tasks/{task_id})
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in openapi.UNDOCUMENTED_BLUEPRINTS:
            continue
        path = openapi.openapi_path(rule.rule)
        assert path in spec["paths"], f"{rule.rule} ({rule.endpoint}) is missing from /openapi.json"
        routed.setdefault(path, set()).update({method.lower() for method in rule.methods or ()} - {"head", "options"})
    for path, methods in routed.items():
        assert methods == set(spec["paths"][path]), path
    assert {"/v1/classify", "/v1/classify/async", "/v1/classify/batch", "/v1/tasks/{task_id}", "/invocations",
            "/livez", "/readyz", "/ping", "/version"} <= set(spec["paths"])


def test_the_request_schemas_are_the_pydantic_models_own(spec: dict[str, Any]) -> None:
    """One source of truth: the body the route validates is the body the spec describes."""
    for path, model in (("/v1/classify", ClassifyPayload), ("/v1/classify/async", ClassifyPayload),
                        ("/v1/classify/batch", BatchPayload)):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        expected = model.model_json_schema(ref_template=openapi.REF)
        expected.pop("$defs", None)
        assert _resolve(spec, schema) == expected
    assert spec["openapi"] == "3.1.0"


def test_every_operation_documents_the_error_envelope_for_each_failure_it_can_answer(spec: dict[str, Any]) -> None:
    classify = spec["paths"]["/v1/classify"]["post"]["responses"]
    assert {"200", "400", "413", "415", "500", "503", "504"} == set(classify)
    assert "401" not in classify  # no API_KEYS: no key is asked for
    unavailable = _resolve(spec, classify["503"])
    assert set(unavailable["headers"]) == {"X-Request-ID", "Retry-After"}
    assert _resolve(spec, unavailable["content"]["application/json"]["schema"])["properties"]["message"] == {
        "const": "failed", "title": "Message", "type": "string"}
    timeout = _resolve(spec, classify["504"])
    assert "Location" in timeout["headers"]
    assert _resolve(spec, timeout["content"]["application/json"]["schema"])["properties"]["data"] == {
        "$ref": "#/components/schemas/AcceptedTask"}
    assert "404" in spec["paths"]["/v1/tasks/{task_id}"]["get"]["responses"]
    assert "Location" in spec["paths"]["/v1/classify/async"]["post"]["responses"]["202"]["headers"]


def test_with_api_keys_the_protected_routes_document_their_key_and_401_and_the_docs_stay_public() -> None:
    client = _app(api_keys=SecretStr("k1-0123456789abcdef")).test_client()
    spec = client.get("/openapi.json").get_json()
    for path, method in (("/v1/classify", "post"), ("/v1/tasks/{task_id}", "get"), ("/invocations", "post")):
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
        assert "401" in operation["responses"]
    for path in ("/livez", "/readyz", "/ping", "/version"):
        assert "security" not in spec["paths"][path]["get"] and "401" not in spec["paths"][path]["get"]["responses"]
    assert client.get("/docs").status_code == 200


V2_PATHS = {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
            "/v2/models/{model_name}/ready", "/v2/models/{model_name}/infer",
            "/v2/models/{model_name}/versions/{model_version}",
            "/v2/models/{model_name}/versions/{model_version}/ready",
            "/v2/models/{model_name}/versions/{model_version}/infer"}


def test_the_v2_routes_document_the_protocols_bodies_and_its_error_object(spec: dict[str, Any]) -> None:
    assert set(spec["paths"]) >= V2_PATHS
    infer = spec["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]["post"]
    assert set(infer["responses"]) == {"200", "400", "404", "413", "500", "503", "504"}
    for status, answer in infer["responses"].items():
        schema = _resolve(spec, _resolve(spec, answer)["content"]["application/json"]["schema"])
        expected = {"model_name", "model_version", "id", "outputs"} if status == "200" else {"error"}
        assert set(schema["properties"]) == expected, status
    assert "Location" in _resolve(spec, infer["responses"]["504"])["headers"]
    assert "Retry-After" in _resolve(spec, infer["responses"]["503"])["headers"]
    request = _resolve(spec, infer["requestBody"]["content"]["application/json"]["schema"])
    assert request["required"] == ["inputs"] and request["additionalProperties"] is False
    tensor = _resolve(spec, request["properties"]["inputs"]["items"])
    assert tensor["properties"]["datatype"]["enum"] == ["FP32", "FP64"]
    names = {p["name"]: p for p in infer["parameters"] if "name" in p}
    assert names["model_name"]["schema"] == {"type": "string", "enum": ["iris-classifier"]}
    assert names["model_version"]["schema"] == {"type": "string"}
    assert spec["paths"]["/v2/health/ready"]["get"]["responses"]["503"] == {
        "$ref": "#/components/responses/V2Unavailable"}
    assert "503" not in spec["paths"]["/v2/health/live"]["get"]["responses"]


def test_with_api_keys_the_v2_model_routes_document_their_key_and_a_401_error_object() -> None:
    spec = _app(api_keys=SecretStr("k1-0123456789abcdef")).test_client().get("/openapi.json").get_json()
    for path, operations in spec["paths"].items():
        if path.startswith("/v2/models/"):
            for operation in operations.values():
                assert operation["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}], path
                assert operation["responses"]["401"] == {"$ref": "#/components/responses/V2Unauthorized"}, path
        elif path.startswith("/v2"):
            assert "security" not in operations["get"] and "401" not in operations["get"]["responses"], path


def test_schemathesis_loads_the_spec_and_every_ref_resolves(spec: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(spec)
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert "POST /v1/classify" in labels and "GET /v1/tasks/{task_id}" in labels
    assert len(labels) == sum(len(operations) for operations in spec["paths"].values())
    refs = re.findall(r'"\$ref": ?"([^"]+)"', str(spec).replace("'", '"'))
    assert refs
    for ref in refs:
        _resolve(spec, {"$ref": ref})  # a KeyError names a dangling reference


def test_the_feature_literal_restates_the_contracts_features() -> None:
    assert typing.get_args(Feature) == FEATURES


def test_the_spec_is_built_once_per_app_and_not_by_create_app(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    assert openapi.KEY not in app.extensions
    calls = []
    build = openapi.build_spec
    monkeypatch.setattr(openapi, "build_spec", lambda app: calls.append(1) or build(app))
    client = app.test_client()
    client.post("/v1/classify", json={"sepal_length": 1})  # the hot path builds nothing (a 400 here)
    assert openapi.KEY not in app.extensions
    first, second = client.get("/openapi.json"), client.get("/openapi.json")
    assert first.data == second.data and calls == [1]


def test_the_docs_page_loads_only_local_assets_and_each_answers(app: Flask) -> None:
    client = app.test_client()
    resp = client.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'self';")
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"docs/static/swagger-ui-bundle.js", "docs/static/swagger-ui.css", "docs/static/docs.js"} <= set(links)
    for link in links:
        asset = client.get(urljoin("/docs", link))
        assert asset.status_code == 200 and asset.data, link
    initializer = client.get("/docs/static/docs.js").get_data(as_text=True)
    assert 'url: "openapi.json"' in initializer and "validatorUrl: null" in initializer
    assert "http" not in initializer


def test_the_assets_route_serves_only_its_listed_files(client: FlaskClient) -> None:
    for name in ("index.html", "swagger-initializer.js", "..%2F..%2Fopenapi.py", "%2e%2e%2fsettings.py",
                 "swagger-ui-bundle.js.map"):
        resp = client.get(f"/docs/static/{name}")
        assert resp.status_code == 404 and resp.get_json()["message"] == "failed", name
    assert client.get("/docs/static/../../api/openapi.py").status_code == 404


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
