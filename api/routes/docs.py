"""GET /openapi.json and Swagger UI at /docs (swagger-ui-bundle-v2, no CDN); public unless PROTECT_METRICS_AND_DOCS."""

from pathlib import Path

import swagger_ui_bundle
from flask import Blueprint, Response, current_app, request, send_file

from api.errors import NotFound

bp = Blueprint("docs", __name__)

ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
# Only these files are served, each with its type; the wheel's index.html and initializer point at the petstore.
TYPES = {
    "swagger-ui-bundle.js": "text/javascript",  # werkzeug adds "; charset=utf-8" to text types
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
MAX_AGE_SECONDS = 300
# Same-origin only, so the page cannot reach a CDN even by mistake; Swagger UI sets inline styles.
POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; base-uri 'none'; "
          "form-action 'none'; frame-ancestors 'none'")
# Relative links: they resolve under /docs/static/ and /openapi.json wherever a proxy mounts the app.
PAGE = b"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Iris classifier: API</title>
  <link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
  <script src="docs/static/swagger-ui-bundle.js" defer></script>
  <script src="docs/static/docs.js" defer></script>
</head>
<body>
  <div id="swagger-ui"></div>
</body>
</html>
"""
# validatorUrl null: Swagger UI would otherwise send the description to validator.swagger.io.
INITIALIZER = b"""window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null});
});
"""


def _secure(response: Response) -> Response:
    """Cache for a while, revalidate by ETag, and allow nothing but this origin."""
    response.cache_control.public = True
    response.cache_control.max_age = MAX_AGE_SECONDS
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = POLICY
    return response


def _body(body: bytes, content_type: str) -> Response:
    response = _secure(Response(body, content_type=content_type))
    response.add_etag()
    response.make_conditional(request)  # in place: a 304 with no body when the ETag matches
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    """Serve the OpenAPI description, built once per app."""
    from api.openapi.spec import spec_json  # here, not at the top: its models cost a server ~50 ms to start

    return _body(spec_json(current_app), "application/json")


@bp.get("/docs")
def page() -> Response:
    """Serve Swagger UI's page for /openapi.json."""
    return _body(PAGE, "text/html; charset=utf-8")


@bp.get("/docs/static/<name>")
def asset(name: str) -> Response:
    """Serve Swagger UI's script, stylesheet, icon and our initializer."""
    if name == "docs.js":
        return _body(INITIALIZER, "text/javascript; charset=utf-8")
    if name not in TYPES:
        raise NotFound(f"no file {name!r} in the API docs")
    response = send_file(ASSETS / name, mimetype=TYPES[name], max_age=MAX_AGE_SECONDS, conditional=True, etag=True)
    return _secure(response)
