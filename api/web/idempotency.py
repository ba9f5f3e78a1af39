"""Read a request's Idempotency-Key header: bound it, scope it to the API key that sent it, fingerprint the request.

The header is 1 to MAX_LENGTH printable ASCII characters, bare (as Stripe's clients send it: no double quote, no
space at either end) or as a quoted structured-field string without escapes (as the IETF draft writes it:
``"8e03978e-…"``); anything else is a 400. :data:`PATTERN` is the rule, and /openapi.json publishes it. With API
keys on, the record's name digests the sending key's SHA-256 with the header, so two clients' keys never meet and
Redis holds neither key. The fingerprint digests the route, the validated body (keys sorted, so key order and spacing
do not matter) and the Callback-URL header: the same key with any of them changed is another request (a 422).
"""

import hashlib
import re
from typing import Any

import orjson
from flask import current_app, request

from api.errors import BadIdempotencyKey
from api.idempotency import IdempotencyKey
from api.web import auth

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
PATTERN = rf'^(?:[!#-~](?:[ !#-~]{{0,{MAX_LENGTH - 2}}}[!#-~])?|"[ !#-\[\]-~]{{1,{MAX_LENGTH}}}")$'
_KEY = re.compile(PATTERN)
# Headers that change what a submit does, so belong to its fingerprint.
FINGERPRINTED_HEADERS = ("Callback-URL",)


def _parse(value: str) -> str:
    """Return the key a header value carries, or raise BadIdempotencyKey saying what is wrong."""
    if _KEY.fullmatch(value):  # fullmatch: "$" alone would let a final newline through
        return value[1:-1] if value[0] == '"' else value
    key = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    if len(key) > MAX_LENGTH:
        raise BadIdempotencyKey(f"{HEADER} is {len(key)} characters long; at most {MAX_LENGTH}")
    raise BadIdempotencyKey(f"{HEADER} must be 1 to {MAX_LENGTH} printable ASCII characters, with no double quote "
                            "and no space at either end, or such a key in double quotes")


def _scope() -> str:
    """Return the digest of the API key this request was let in with, or "" when keys are off."""
    if request.endpoint not in auth.protected_endpoints(current_app):
        return ""
    environ = request.environ
    presented = auth.presented_key(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY")) or ""
    return hashlib.sha256(presented.encode()).hexdigest()


def idempotency_key(prefix: str, body: Any) -> IdempotencyKey | None:
    """Return this request's Idempotency-Key (its record under ``prefix``) for its validated ``body``, or None."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    key = _parse(value)
    record = hashlib.sha256(f"{_scope()}\n{key}".encode()).hexdigest()
    fingerprint = hashlib.sha256(b"\n".join([
        (request.endpoint or "").encode(), orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
        *(request.headers.get(name, "").encode() for name in FINGERPRINTED_HEADERS)])).hexdigest()
    return IdempotencyKey(f"{prefix}{record}", fingerprint)
