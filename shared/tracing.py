"""OpenTelemetry tracing for every process, off unless the standard OTel environment names an exporter.

On when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, or
``OTEL_TRACES_EXPORTER`` is ``otlp`` or ``console``. Off when none is, when ``OTEL_TRACES_EXPORTER=none`` or
``OTEL_SDK_DISABLED=true``. Unlike the SDK's own default (export to localhost), nothing is exported unless
asked: a service that was not told where traces go pays nothing for them. When off, the entry points call
:func:`enabled` once at start-up and build nothing; opentelemetry's tracing modules are not even imported.

When on, the entry point calls :func:`setup` once per process: one ``TracerProvider`` whose
``BatchSpanProcessor`` exports over OTLP/HTTP (protobuf) from a thread of that process. The SDK reads the rest
of the standard variables itself: ``OTEL_SERVICE_NAME`` (else ``iris-api`` / ``iris-worker``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_SCHEDULE_DELAY``, sampling.
Every Celery task the process sends then carries the current span's W3C ``traceparent`` header.
"""

import logging
import multiprocessing.util
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The W3C trace-context headers a message carries (Celery hands custom headers to the task's request).
HEADERS = ("traceparent", "tracestate")
_PUBLISH_UID = "iris-tracing-inject"

_provider: Any = None  # this process's TracerProvider, once setup() ran with tracing on


def exporter_name(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the exporter the OTel environment asks for ("otlp" or "console"), or None when tracing is off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    # Compose passes unset variables through as empty strings: empty means unset.
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named == "none":
        return None
    if named:
        if named not in EXPORTERS:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console or none): tracing is off", named)
            return None
        return named
    return "otlp" if any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES) else None


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Return whether the OTel environment turns tracing on."""
    return exporter_name(environ) is not None


def provider() -> Any:
    """Return this process's TracerProvider, or None while tracing is off."""
    return _provider


def setup(service_name: str, exporter: Any = None) -> Any:
    """Start tracing in this process once and return its TracerProvider; None (importing nothing) when off.

    ``exporter`` replaces the one the environment names (tests pass an in-memory exporter). The
    ``BatchSpanProcessor``'s thread starts here, so call this in the process that serves (after a server's
    fork); the SDK restarts it in children forked later (Celery's prefork pool). Spans still queued are
    exported at interpreter exit (the SDK's atexit hook) and by :func:`shutdown`.
    """
    global _provider
    if _provider is not None:
        return _provider
    name = "otlp" if exporter is not None else exporter_name()
    if name is None:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # no OTEL_SERVICE_NAME
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    traced = TracerProvider(resource=resource)
    if exporter is None:
        # Global too, so any OpenTelemetry instrumentation a deployment adds reports to the same exporter
        # (tests, which pass their own exporter, leave the process's global alone: it can be set only once).
        trace.set_tracer_provider(traced)
        exporter = _exporter(name)
    traced.add_span_processor(BatchSpanProcessor(exporter))
    _provider = traced
    # A process that multiprocessing forked (granian's workers) leaves with os._exit and runs no atexit hook,
    # so the SDK's own would never export the last spans; multiprocessing runs its finalizers there, and at
    # the interpreter's exit everywhere else.
    multiprocessing.util.Finalize(traced, flush, exitpriority=10)
    _inject_into_published_tasks()
    log.info("tracing on: %s spans of %s", name, resource.attributes.get(SERVICE_NAME))
    return traced


def shutdown() -> None:
    """Export the spans still queued and stop tracing in this process (tests turn it off again with this)."""
    global _provider
    traced, _provider = _provider, None
    if traced is not None:
        from celery import signals

        signals.before_task_publish.disconnect(dispatch_uid=_PUBLISH_UID)
        traced.shutdown()


def flush() -> None:
    """Export the spans still queued now (a process about to leave with ``os._exit`` runs no atexit hook)."""
    if _provider is not None:
        _provider.force_flush()


def inject(carrier: dict[str, Any], context: Any = None) -> None:
    """Write ``context``'s span (default: the current one) into ``carrier`` as W3C trace-context headers."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    TraceContextTextMapPropagator().inject(carrier, context=context)


def extract(carrier: Mapping[str, Any]) -> Any:
    """Return the OTel context whose parent is the span ``carrier``'s W3C headers name (empty if none)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def _exporter(name: str) -> Any:
    """Build the span exporter ``name`` (from EXPORTERS), configured by the standard OTEL_EXPORTER_* variables."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.warning("OTLP protocol %s is not installed: exporting over http/protobuf (port 4318)", protocol)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Resolved here, not by the SDK, which would take an empty variable (compose's unset default) as the URL.
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return OTLPSpanExporter(endpoint=traces or f"{base.rstrip('/')}/v1/traces")


def _inject_into_published_tasks() -> None:
    """Make every Celery task this process sends carry the current span's trace context in its headers.

    Celery's ``before_task_publish`` fires on both publish paths of api/batching/publisher.py and in ``send_task``,
    with the very headers dict it then sends, so the edge batch's span and an async request's span reach
    the worker with no change to either path.
    """
    from celery import signals

    def add_trace_headers(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is not None:
            inject(headers)

    signals.before_task_publish.connect(add_trace_headers, weak=False, dispatch_uid=_PUBLISH_UID)
