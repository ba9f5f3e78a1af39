"""A keyed API under granian and gunicorn: no spelling of a protected route reaches its view without the key, and
set but unusable keys stop either server at start with one line on stderr."""

import http.client
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import ROOT, SEED_EXAMPLE, WorkerProcess, api_argv, api_server, free_port

pytestmark = pytest.mark.integration

KEY = f"spellings-{uuid.uuid4().hex}"
SERVERS = ["granian", "gunicorn"]
# The protected routes, as (method, canonical path, body); the task's id is filled in once one is issued.
CLASSIFY = ("POST", "/v1/classify", SEED_EXAMPLE)
ASYNC = ("POST", "/v1/classify/async", SEED_EXAMPLE)
BATCH = ("POST", "/v1/classify/batch", {"instances": [SEED_EXAMPLE, SEED_EXAMPLE]})
INVOCATIONS = ("POST", "/invocations", {"inputs": [[7.7, 2.6, 6.9, 2.3]]})
# What only a view answers: a label, a prediction, a task's status.
VIEW_MARKERS = ("pred_label", "predictions", "Iris-", "task_id", "status_url", "SUCCESS", "PENDING")


class Answer:
    """One raw HTTP answer: status, headers and body."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def envelope(self) -> dict[str, Any] | None:
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return None  # the server's own 400, not the app's
        return parsed if isinstance(parsed, dict) else None

    def __repr__(self) -> str:
        return f"{self.status} {self.body[:200]!r}"


def send(base: str, method: str, raw_path: str, body: object = None, key: str | None = None) -> Answer:
    """Send ``raw_path`` byte for byte (http.client normalises nothing, unlike urllib) and read the answer."""
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request(method, raw_path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def spellings(path: str) -> list[str]:
    """Return many raw spellings of ``path``: each routes to it, or to nothing, depending on how it is decoded."""
    first, _, rest = path[1:].partition("/")
    tail = f"/{rest}" if rest else ""
    encoded = "".join(char if char == "/" else f"%{ord(char):02X}" for char in path)
    return [
        # repeated slashes
        f"/{path}", f"//{path}", f"///{path}", path.replace("/", "//"), f"/{first}/{tail}", f"{path}//",
        # percent-encoded slashes, upper and lower case
        f"/%2F{path[1:]}", f"/%2f{path[1:]}", f"/%2F%2F{path[1:]}", f"/{first}%2F{rest}", f"/{first}%2f{rest}",
        path.replace("/", "%2F"),
        # dot segments, plain and encoded
        f"/x/..{path}", f"/.{path}", f"/{first}/.{tail}", f"/{first}/x/..{tail}", f"/x/%2e%2e{path}",
        f"/%2E{path}", f"{path}/.", f"{path}/..{tail}",
        # trailing slashes and suffixes
        f"{path}/", f"{path};x", f"{path}%20", f"{path}%00", f"{path}%2F",
        # mixed case
        path.upper(), path.title(), f"/{first.upper()}{tail}", f"/{first}{tail.upper()}",
        # percent-encoded letters, every character encoded, and backslashes
        f"/%{ord(first[0]):02x}{path[2:]}", encoded, encoded.lower(), path.replace("/", "\\"),
        f"/{first}\\{rest}",
    ]


@pytest.fixture(scope="module", params=SERVERS)
def keyed_api(request: pytest.FixtureRequest, stack_env: dict[str, str], worker: WorkerProcess) -> Iterator[str]:
    """A keyed API as ``make up`` (granian) or gunicorn serves it, on the test Redis with a worker answering."""
    with api_server(stack_env, server=request.param, API_KEYS=f"{KEY},other-{KEY}", WEB_CONCURRENCY="1",
                    WEB_THREADS="4") as url:
        yield url


@pytest.fixture(scope="module")
def task_path(keyed_api: str) -> str:
    """The status path of a task this API issued and a worker finished: its view answers 200 with the label."""
    accepted = send(keyed_api, *ASYNC, key=KEY)
    assert accepted.status == 202, accepted
    path = str(accepted.headers["Location"])
    deadline = time.monotonic() + 30
    while (done := send(keyed_api, "GET", path, key=KEY)).status != 200 or b"SUCCESS" not in done.body:
        assert time.monotonic() < deadline, done
        time.sleep(0.1)
    return path


def assert_refused_without_reaching_the_view(answer: Answer, spelled: str) -> None:
    """401 from the key check, 404/405 from routing, or the server's own 400: never anything the view answers."""
    assert answer.status in (400, 401, 404, 405), (spelled, answer)
    assert not any(marker.encode() in answer.body for marker in VIEW_MARKERS), (spelled, answer)
    envelope = answer.envelope()
    if answer.status == 401:
        assert envelope is not None and envelope["error"]["raised"] == "Unauthorized", (spelled, answer)
    elif answer.status in (404, 405) and envelope is not None:
        # Routing's own answer, no view's 404 (an unknown task): the envelope names no view.
        assert envelope["error"]["raisedOn"] == "Api", (spelled, answer)


@pytest.mark.parametrize("route", [CLASSIFY, ASYNC, BATCH, INVOCATIONS], ids=lambda route: route[1])
def test_no_spelling_of_a_protected_post_route_reaches_its_view_without_the_key(
        keyed_api: str, route: tuple[str, str, object]) -> None:
    method, path, body = route
    answers = {spelled: send(keyed_api, method, spelled, body) for spelled in spellings(path)}
    for spelled, answer in answers.items():
        assert_refused_without_reaching_the_view(answer, spelled)
    # These spellings route to the view (the servers decode %2F, werkzeug drops leading slashes): the key decides.
    for spelled in (f"/{path}", f"//{path}", f"/%2F{path[1:]}", f"/%2f{path[1:]}", encoded_letter(path)):
        assert answers[spelled].status == 401, (spelled, answers[spelled])


def encoded_letter(path: str) -> str:
    """Spell ``path`` with its first letter percent-encoded: /%761/classify."""
    return f"/%{ord(path[1]):02x}{path[2:]}"


def test_no_spelling_of_a_task_status_reaches_its_view_without_the_key(keyed_api: str, task_path: str) -> None:
    answers = {spelled: send(keyed_api, "GET", spelled) for spelled in spellings(task_path)}
    for spelled, answer in answers.items():
        assert_refused_without_reaching_the_view(answer, spelled)
    for spelled in (f"/{task_path}", f"/%2F{task_path[1:]}", encoded_letter(task_path)):
        assert answers[spelled].status == 401, (spelled, answers[spelled])


@pytest.mark.parametrize(("route", "status"), [(CLASSIFY, 200), (ASYNC, 202), (BATCH, 200), (INVOCATIONS, 200)],
                         ids=lambda value: value[1] if isinstance(value, tuple) else str(value))
def test_the_canonical_route_answers_with_the_key_and_401_with_a_wrong_one(
        keyed_api: str, route: tuple[str, str, object], status: int) -> None:
    method, path, body = route
    right = send(keyed_api, method, path, body, key=KEY)
    assert right.status == status, right
    assert b"Iris-virginica" in right.body or b"task_id" in right.body
    assert send(keyed_api, method, path, body, key=f"other-{KEY}").status == status
    wrong = send(keyed_api, method, path, body, key=f"{KEY}x")
    assert wrong.status == 401 and (wrong.envelope() or {}).get("error", {}).get("raised") == "Unauthorized"


def test_the_task_status_answers_with_the_key_and_401_with_a_wrong_one(keyed_api: str, task_path: str) -> None:
    right = send(keyed_api, "GET", task_path, key=KEY)
    assert right.status == 200 and b"Iris-virginica" in right.body, right
    assert send(keyed_api, "GET", task_path, key=KEY[:-1]).status == 401


def test_open_routes_answer_without_a_key(keyed_api: str) -> None:
    for path in ("/livez", "/readyz", "/ping", "/version", "/", "/metrics", "/docs", "/openapi.json"):
        assert send(keyed_api, "GET", path).status == 200, path


@pytest.fixture
def empty_key_file(tmp_path: Path) -> str:
    path = tmp_path / "api-keys"
    path.write_text("\n")
    return str(path)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(("setting", "problem"), [("API_KEYS", "API_KEYS is set but holds no key"),
                                                  ("API_KEYS_FILE", "is set but holds no key")])
def test_unusable_keys_stop_the_server_at_start_with_one_line(stack_env: dict[str, str], empty_key_file: str,
                                                              server: str, setting: str, problem: str) -> None:
    port = free_port()
    env = {**stack_env, "PORT": str(port), "GUNICORN_BIND": f"127.0.0.1:{port}", "API_HOST": "127.0.0.1",
           setting: " , " if setting == "API_KEYS" else empty_key_file}
    env.pop("API_KEYS_FILE" if setting == "API_KEYS" else "API_KEYS", None)
    started = time.monotonic()
    run = subprocess.run(api_argv(server), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    elapsed = time.monotonic() - started
    assert run.returncode != 0 and elapsed < 10, (run.returncode, elapsed)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0] and lines[0].startswith("iris-api: cannot start:"), run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
