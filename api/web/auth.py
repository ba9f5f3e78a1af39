"""API keys: load them fail-closed at start, and require one on every request routed to a protected endpoint.

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Whether a request needs a key is decided
on the endpoint Flask routed it to, never on the path as the client spelled it: ``//v1/classify``,
``/%2Fv1/classify`` and ``/v1/classify`` reach the same view, so they need the same key. Paths that route
nowhere answer 404 (or 405), key or not: they reach no view, and the routes are public in /openapi.json anyway.

Keys come from API_KEYS (comma-separated) or API_KEYS_FILE (commas or line breaks, as Docker and Kubernetes mount
secrets), never both. Set but blank or malformed, they stop the API at start (:class:`KeyConfigError`); unset,
the API is open and nothing is added to the request path.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against every configured key, with no early
exit, so neither a key's length nor which key nearly matched shows in the response time. The keys themselves
are never logged, and no error message quotes one.
"""

import hashlib
import hmac
from collections.abc import Iterable

from flask import Flask, request

from api.errors import Unauthorized
from shared.settings import Settings

EXTENSION = "iris.auth"  # app.extensions: the endpoints that need a key (empty when keys are off)
# Rule templates (the canonical paths routes are registered under) whose endpoints need a key: the root itself
# and everything under it. /invocations (MLflow's scoring protocol) and /v2/models (the Open Inference Protocol's
# model routes) classify as /v1 does; /v2's health and server metadata stay public, as /livez and /readyz do.
KEYED_ROOTS = ("/v1", "/invocations", "/v2/models")
# Public by default (Prometheus scrapes, browsers read the docs); behind the key with PROTECT_METRICS_AND_DOCS.
METRICS_AND_DOCS_ROOTS = ("/metrics", "/docs", "/openapi.json")
# Anyone may guess keys online, one request at a time: refuse the guessable ones (`openssl rand -hex 32`: 64).
MIN_KEY_LENGTH = 16
# A file of keys is a few hundred bytes; refuse anything far larger (a mistyped path to a device or a log).
MAX_KEY_FILE_BYTES = 64 * 1024


class KeyConfigError(ValueError):
    """API_KEYS or API_KEYS_FILE is set but unusable; the message names the problem in one line, never a key."""


def _check(key: str, source: str, number: int, count: int) -> None:
    """Refuse a key that is too short or holds anything but printable ASCII (a header carries it verbatim)."""
    where = f"{source}: key {number} of {count}"
    if not key:
        raise KeyConfigError(f"{where} is empty (a stray comma, or a variable that expanded to nothing)")
    if any(char.isspace() for char in key):
        raise KeyConfigError(f"{where} contains whitespace; separate keys with commas")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise KeyConfigError(f"{where} contains a control character")
    if not key.isascii():
        raise KeyConfigError(f"{where} contains a non-ASCII character; HTTP headers carry ASCII keys")
    if len(key) < MIN_KEY_LENGTH:
        raise KeyConfigError(f"{where} is {len(key)} characters long; a key needs at least {MIN_KEY_LENGTH} "
                             "(e.g. `openssl rand -hex 32`)")


def parse_keys(text: str, source: str = "API_KEYS", lines: bool = False) -> list[str]:
    """Split ``text`` on commas (and line breaks when ``lines``) into keys, or raise :class:`KeyConfigError`.

    Spaces around a key are dropped; an empty item, a key with whitespace, control or non-ASCII characters inside,
    or a key shorter than MIN_KEY_LENGTH is refused. In a file, blank lines (a final newline) are not items.
    """
    rows = [row for row in text.replace("\r\n", "\n").split("\n") if row.strip()] if lines else [text]
    items = [item.strip() for row in rows for item in row.split(",")]
    if not any(items):
        raise KeyConfigError(f"{source} is set but holds no key (blank, or only commas); give at least one key, "
                             "or unset it to run without keys")
    for number, key in enumerate(items, 1):
        _check(key, source, number, len(items))
    return list(dict.fromkeys(items))  # the same key twice is one key


def _read_key_file(path: str) -> str:
    """Return the text of the key file, or raise :class:`KeyConfigError` saying why it cannot be read."""
    if not path.strip():
        raise KeyConfigError("API_KEYS_FILE is set but blank; name the file that holds the keys, or unset it")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyConfigError(f"API_KEYS_FILE: no such file: {path}") from None
    except OSError as exc:  # permission denied, a directory, ...: the reason is the OS's, the path is no secret
        raise KeyConfigError(f"API_KEYS_FILE: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyConfigError(f"API_KEYS_FILE: {path} is larger than {MAX_KEY_FILE_BYTES // 1024} kB; "
                             "is it the file of keys?")
    try:
        return data.decode("utf-8-sig")  # -sig: drop the byte-order mark some editors write
    except UnicodeDecodeError:  # its message would quote a byte of the file
        raise KeyConfigError(f"API_KEYS_FILE: {path} is not UTF-8 text") from None


def load_keys(settings: Settings) -> list[str]:
    """Return the configured keys (none: the API is open), or raise :class:`KeyConfigError` if they are unusable.

    Unusable: API_KEYS and API_KEYS_FILE both set, either one malformed (:func:`parse_keys`), the file unreadable,
    or PROTECT_METRICS_AND_DOCS on with no key at all.
    """
    value, path = settings.api_keys, settings.api_keys_file
    if value is not None and path is not None:
        raise KeyConfigError("both API_KEYS and API_KEYS_FILE are set; set one of them")
    if path is not None:
        return parse_keys(_read_key_file(path), f"API_KEYS_FILE {path}", lines=True)
    if value is not None:
        return parse_keys(value.get_secret_value())
    if settings.protect_metrics_and_docs:  # asked for protection, would get none: fail closed
        raise KeyConfigError("PROTECT_METRICS_AND_DOCS is on but no key is set; set API_KEYS or API_KEYS_FILE")
    return []


def _under(rule: str, roots: Iterable[str]) -> bool:
    return any(rule == root or rule.startswith(f"{root}/") for root in roots)


def protected_endpoints(app: Flask) -> frozenset[str]:
    """Return the endpoints of ``app`` that need a key: none when keys are off."""
    protected: frozenset[str] = app.extensions.get(EXTENSION, frozenset())
    return protected


class ApiKeys:
    """The accepted keys, held only as digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    def accepts(self, presented: str | None) -> bool:
        """Say whether ``presented`` is one of the keys; time does not depend on which one, or how close."""
        digest = _digest(presented or "")
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(known, digest)
        return matched and bool(presented)

    def __bool__(self) -> bool:
        return bool(self._digests)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """Return the key a client sent: the Bearer token, else the X-API-Key header."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return api_key


def init_app(app: Flask, keys: list[str], protect_metrics_and_docs: bool = False) -> None:
    """Require a key on the protected endpoints of ``app`` when ``keys`` is not empty; call it once every route is in.

    A ``before_request`` hook, so the check runs on the endpoint Flask matched, before any other hook but the
    tracing one (which only names the span). It costs less than a middleware that binds the URL map to match a
    second time (docs/security.md, "What the guards cost").
    """
    roots = KEYED_ROOTS + (METRICS_AND_DOCS_ROOTS if protect_metrics_and_docs else ())
    # An endpoint with any rule under a protected root is protected on all its rules: fail closed.
    protected = frozenset(rule.endpoint for rule in app.url_map.iter_rules() if _under(rule.rule, roots))
    api_keys = ApiKeys(keys)
    app.extensions[EXTENSION] = protected if api_keys else frozenset()
    if not api_keys:
        return

    def require_key() -> None:
        rule = request.url_rule  # None when nothing matched: the 404 or 405 follows, key or not
        if rule is not None and rule.endpoint in protected:
            environ = request.environ
            if not api_keys.accepts(presented_key(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))):
                raise Unauthorized()

    app.before_request_funcs.setdefault(None, []).insert(0, require_key)
