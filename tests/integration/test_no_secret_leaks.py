"""No secret is printed, logged or served: `make up` against a Redis with a password in its URLs, driven through
every route, a Redis outage and its recovery, leaves the password in no log line, no console line and no answer.

The password also sits in the URL of the OTLP exporter (tracing on, exporting to a port nothing listens on), a
URL the API and the worker read and fail to reach all along.
"""

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.helpers import SEED_EXAMPLE, AuthRedisServer, UpScript, free_port

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 4.0


class Seen:
    """Every answer's status line, headers and body, kept to search for the secret."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def call(self, url: str, body: Any = None, method: str | None = None, raw: bytes | None = None,
             timeout: float = 15) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, headers, text = resp.status, str(resp.headers), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, headers, text = exc.code, str(exc.headers), exc.read().decode(errors="replace")
        self.texts.append(f"{status} {url}\n{headers}\n{text}")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


def drive_every_route(seen: Seen, base: str, worker_metrics: str) -> None:
    """Call every route once (and poll an async task to its end), checking the answers a healthy stack gives."""
    call = seen.call
    assert call(f"{base}/v1/classify", SEED_EXAMPLE)[0] == 200
    status, accepted = call(f"{base}/v1/classify/async", SEED_EXAMPLE)
    assert status == 202, accepted
    deadline = time.monotonic() + 20
    while call(f"{base}{accepted['data']['status_url']}")[1]["data"]["status"] != "SUCCESS":
        assert time.monotonic() < deadline, seen.texts[-1]
        time.sleep(0.1)
    assert call(f"{base}/v1/classify/batch", {"instances": [SEED_EXAMPLE] * 3})[0] == 200
    assert call(f"{base}/invocations", {"inputs": [[7.7, 2.6, 6.9, 2.3]]})[0] == 200
    for path in ("/readyz", "/version", "/metrics", "/livez", "/ping", "/docs", "/openapi.json"):
        assert call(f"{base}{path}")[0] == 200, path
    assert call(f"{worker_metrics}/metrics")[0] == 200
    assert call(f"{base}/no/such/route")[0] == 404
    assert call(f"{base}/v1/classify", method="GET")[0] == 405
    assert call(f"{base}/v1/classify", {**SEED_EXAMPLE, "sepal_length": "x"})[0] == 400
    assert call(f"{base}/v1/classify", raw=b"{not json")[0] == 400
    assert call(f"{base}/v1/tasks/{uuid.uuid4()}")[0] == 404
    assert call(f"{base}/invocations", {"instances": "nope"})[0] == 400


def test_no_password_reaches_a_log_a_console_line_or_an_answer_through_an_outage(
        stack_env: dict[str, str], auth_redis: AuthRedisServer, secret: str, tmp_path: Path,
        up: Callable[[dict[str, str]], UpScript]) -> None:
    started = time.monotonic()
    env = {**stack_env, "CELERY_BROKER_URL": auth_redis.url(0), "CELERY_RESULT_BACKEND": auth_redis.url(1),
           "PORT": str(free_port()), "WORKER_METRICS_PORT": str(free_port()), "WORKERS": "1", "LOGLEVEL": "INFO",
           # Tracing on, exporting to a URL that carries the password and that nothing answers.
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://iris:{quote(auth_redis.password or '', safe='')}"
                                          f"@127.0.0.1:{free_port()}",
           "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    stack = up(env)
    base = f"http://127.0.0.1:{stack.port}"
    worker_metrics = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}"
    seen = Seen()
    stack.wait_for(lambda: "is ready" in stack.output(), "the ready banner", 120)
    drive_every_route(seen, base, worker_metrics)

    # An outage: every route that needs Redis answers 503, and the worker and the API log what they lost.
    auth_redis.stop()
    outage = {"/v1/classify": SEED_EXAMPLE, "/v1/classify/async": SEED_EXAMPLE,
              "/v1/classify/batch": {"instances": [SEED_EXAMPLE]}, "/invocations": {"inputs": [[7.7, 2.6, 6.9, 2.3]]}}
    ends = time.monotonic() + OUTAGE_SECONDS
    refused = 0
    while time.monotonic() < ends:
        for path, body in outage.items():
            status, answer = seen.call(f"{base}{path}", body)
            assert status == 503, (path, answer)
            refused += 1
        assert seen.call(f"{base}/readyz")[0] == 503
        seen.call(f"{base}/version")
        seen.call(f"{base}/metrics")
        seen.call(f"{base}/v1/tasks/{uuid.uuid4()}")
        time.sleep(0.2)
    auth_redis.start()
    stack.wait_for(lambda: seen.call(f"{base}/v1/classify", SEED_EXAMPLE)[0] == 200, "a classify after the outage", 60)
    stack.wait_for(lambda: seen.call(f"{base}/readyz")[0] == 200, "/readyz after the outage", 30)
    drive_every_route(seen, base, worker_metrics)
    time.sleep(0.5)  # the last lines reach the log files
    assert stack.terminate() == 143

    run_dir = tmp_path / "run"
    logs = {path.name: path.read_text(errors="replace") for path in sorted(run_dir.rglob("*")) if path.is_file()}
    texts = {**logs, "up.sh's output": stack.output(), **{f"answer {n}": t for n, t in enumerate(seen.texts)}}
    leaks = sorted(name for name, text in texts.items() if secret in text)
    print(f"\n{len(seen.texts)} answers ({refused} refused in the outage), {len(logs)} files in RUN_DIR "
          f"({sum(len(t) for t in logs.values())} bytes) searched in {time.monotonic() - started:.0f} s")
    assert not leaks, {name: [line for line in texts[name].splitlines() if secret in line][:5] for name in leaks}
    # The search found something to search: both programs logged, and logged the outage (naming the broker).
    api_log, worker_log = logs.get("api.log", ""), logs.get("worker-1.log", "")
    assert api_log and worker_log, sorted(logs)
    assert any(line in api_log for line in ("broker unreachable", "reply listener lost Redis", "Redis unreachable"))
    assert "Connection to broker lost" in worker_log or "Cannot connect to" in worker_log
    # The worker's reconnect lines name the broker's URL (kombu masks it; the log formatter would too).
    assert f"://:***@127.0.0.1:{auth_redis.port}/0" in worker_log
