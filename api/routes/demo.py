"""GET / and /demo/<file>: the demo page, plain HTML, JS and CSS shipped in api/static/demo/, public like /livez."""

from functools import cache
from hashlib import sha256
from pathlib import Path

from flask import Blueprint, Response, request

from api.errors import NotFound

bp = Blueprint("demo", __name__)

DIRECTORY = Path(__file__).resolve().parents[1] / "static" / "demo"
# Only these files are served, each with its type: nothing else under api/ can be reached from here.
TYPES = {
    "index.html": "text/html; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}
# Browsers reuse a file for five minutes, then revalidate it with its ETag (a 304 when unchanged).
MAX_AGE_SECONDS = 300
# Same-origin scripts, styles and fetches only: the page needs nothing else, so an injected tag gets nothing.
POLICY = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@cache
def _load(name: str) -> tuple[bytes, str]:
    """Read a file once per process and return its bytes and ETag."""
    body = (DIRECTORY / name).read_bytes()
    return body, sha256(body).hexdigest()[:32]


def _serve(name: str) -> Response:
    """Answer one of the page's files with its content type, caching headers and a 304 when unchanged."""
    body, etag = _load(name)
    response = Response(body, content_type=TYPES[name])
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.max_age = MAX_AGE_SECONDS
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = POLICY
    response.make_conditional(request)  # in place: a 304 with no body when the ETag matches
    return response


@bp.get("/")
def page() -> Response:
    """Serve the demo page."""
    return _serve("index.html")


@bp.get("/demo/<name>")
def asset(name: str) -> Response:
    """Serve the page's script or stylesheet."""
    if name == "index.html" or name not in TYPES:
        raise NotFound(f"no file {name!r} in the demo page")
    return _serve(name)
