"""The demo page: / serves the HTML with its four inputs, and its script and stylesheet with their own types."""

import re

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import create_app
from shared.schemas import FEATURES
from shared.settings import Settings

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def client() -> FlaskClient:
    # Keys on: the page must stay public while /v1 is protected.
    return create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN,
                               api_keys=SecretStr("some-key-0123456789"))).test_client()


def test_root_answers_the_html_page_with_the_four_labelled_inputs_prefilled_with_the_seed_example(
        client: FlaskClient) -> None:
    resp = client.get("/")
    assert resp.status_code == 200 and resp.content_type == "text/html; charset=utf-8"
    html = resp.get_data(as_text=True)
    seed = {"sepal_length": "7.7", "sepal_width": "2.6", "petal_length": "6.9", "petal_width": "2.3"}
    for name in FEATURES:
        assert re.search(rf'<input id="{name}" name="{name}" type="number"[^>]* value="{seed[name]}">', html)
        assert f'<label for="{name}">' in html
    assert '<label for="api_key">' in html and '<button type="submit">Classify</button>' in html
    assert 'aria-live="polite"' in html and 'data-endpoint="/v1/classify"' in html


@pytest.mark.parametrize(("pattern", "mimetype"), [(r'<script src="([^"]+)"', "text/javascript"),
                                                   (r'<link rel="stylesheet" href="([^"]+)"', "text/css")])
def test_the_pages_script_and_stylesheet_are_served_with_their_content_types(
        client: FlaskClient, pattern: str, mimetype: str) -> None:
    match = re.search(pattern, client.get("/").get_data(as_text=True))
    assert match is not None
    resp = client.get(match.group(1))
    assert resp.status_code == 200 and resp.mimetype == mimetype and resp.content_length
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_is_cached_for_minutes_and_revalidates_to_a_304(client: FlaskClient) -> None:
    first = client.get("/demo/demo.js")
    assert first.cache_control.public and first.cache_control.max_age == 300
    etag = first.headers["ETag"]
    again = client.get("/demo/demo.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""


def test_the_page_allows_only_same_origin_scripts_styles_and_requests(client: FlaskClient) -> None:
    policy = client.get("/").headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("path", ["/demo/index.html", "/demo/missing.js", "/demo/..%2F..%2Froutes%2Fdemo.py",
                                  "/demo/../routes/demo.py"])
def test_only_the_pages_own_script_and_stylesheet_are_served_from_demo(client: FlaskClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "404"


def test_the_api_stays_protected_by_keys_while_the_page_is_public(client: FlaskClient) -> None:
    assert client.get("/").status_code == 200
    assert client.post("/v1/classify", json={}).status_code == 401
