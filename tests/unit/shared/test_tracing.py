"""Tracing is off unless the standard OTel environment names an exporter, and off it builds nothing."""

import os
import subprocess
import sys

import pytest

from shared import tracing
from tests.helpers import ROOT


@pytest.mark.parametrize(("environ", "exporter"), [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),  # compose passes unset variables as empty ones
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),  # not installed: off, with a warning
])
def test_the_otel_environment_decides_whether_tracing_is_on(environ: dict[str, str], exporter: str | None) -> None:
    assert tracing.exporter_name(environ) == exporter
    assert tracing.enabled(environ) is (exporter is not None)


def test_setup_without_an_exporter_in_the_environment_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup("iris-test") is None
    assert tracing.provider() is None


# What the API's entry point builds and one request it serves, then the worker's entry point, with tracing
# off. redis-py 8 imports opentelemetry.sdk.metrics on its own when OpenTelemetry is installed, so the check
# is on what tracing would import: the trace SDK, the exporters and the propagators.
OFF_SCRIPT = """
import sys
from celery import signals
from api.wsgi import app
application = app()
assert application.test_client().get('/livez').status_code == 200
batcher = application.extensions['iris'].service._batcher
assert type(application.wsgi_app).__name__ != 'TracingMiddleware'
assert type(batcher._publish).__name__ != 'TracedPublish' and batcher._trace is None
import worker
hooks = [signal.receivers for signal in (signals.task_prerun, signals.task_postrun, signals.before_task_publish)]
assert not any('iris-tracing' in str(receiver) for receivers in hooks for receiver in receivers), hooks
loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter',
                                                        'opentelemetry.propagat')))
assert not loaded, loaded
print('off')
"""


def test_with_tracing_off_the_entry_points_import_no_tracing_module_and_add_no_hook() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CELERY_", "PROMETHEUS_", "prometheus_"))}
    env.update(CELERY_BROKER_URL="redis://127.0.0.1:1/0", CELERY_RESULT_BACKEND="redis://127.0.0.1:1/0",
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", OFF_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "off", done.stderr


@pytest.mark.parametrize(("environ", "endpoint"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318/"}, "http://jaeger:4318/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""},
     "http://jaeger:4318/v1/traces"),  # compose's empty default does not hide the base endpoint
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:9999/traces"}, "http://collector:9999/traces"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}, "http://localhost:4318/v1/traces"),
])
def test_the_otlp_exporter_sends_to_the_traces_path_of_the_configured_endpoint(
        monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], endpoint: str) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    exporter = tracing._exporter("otlp")
    try:
        assert exporter._endpoint == endpoint
    finally:
        exporter.shutdown()
