"""The API's spans: one server span per request, and one producer span per edge batch linked to its requests.

Used only when the entry point turned tracing on (shared/tracing.py): otherwise :func:`init_app` and
:func:`edge_batch` return at once and the request path has no tracing code at all.

An edge batch holds the rows of many requests, so its span cannot be the child of all of them: it starts a
trace of its own, links to each row's request span, and each request span links back to it. Its context
travels in the task message's ``traceparent`` header, so the worker's span is its child. Async and batch
requests send a task of their own, whose worker span is the request span's child.

    request trace A:  POST /v1/classify ──link──┐
    request trace B:  POST /v1/classify ──link──┤
                                                ▼
    batch trace:      iris.classify_rows publish ──(traceparent)──► iris.classify_rows process (worker)
"""

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request

from api.web.request_id import ENVIRON_KEY
from shared import tracing

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# The rows' publisher of api/batching/batcher.py: (rows, task_ids, request_ids) -> None.
Publish = Callable[[list[list[float]], list[str], list[str | None]], None]
BATCH_SPAN = "iris.classify_rows publish"


def init_app(app: Flask) -> None:
    """Give each request of ``app`` a server span named by its route, when tracing is on in this process."""
    provider = tracing.provider()
    if provider is None:
        return
    from opentelemetry import trace

    def name_the_span() -> None:
        # The route is known only once Flask matched it; 404s keep the bare method, as the conventions say.
        rule = request.url_rule
        if rule is not None:
            span = trace.get_current_span()
            span.update_name(f"{request.method} {rule.rule}")
            span.set_attribute("http.route", rule.rule)

    # First of the before_request hooks, so a request another hook refuses is named by its route too.
    app.before_request_funcs.setdefault(None, []).insert(0, name_the_span)
    # Outermost, so the span also covers the answers Flask and the other middlewares build themselves.
    app.wsgi_app = TracingMiddleware(app.wsgi_app, provider.get_tracer(__name__))  # type: ignore[method-assign]


def edge_batch(publish: Publish, queue: str) -> tuple[Callable[..., None], Callable[[], Any] | None]:
    """Return the batcher's ``publish`` and its per-row ``trace`` hook: ``publish`` and None while tracing is off."""
    provider = tracing.provider()
    if provider is None:
        return publish, None
    from opentelemetry import trace

    # The hook hands the batcher each row's request span, an object it only passes through.
    return TracedPublish(publish, provider.get_tracer(__name__), queue), trace.get_current_span


class TracingMiddleware:
    """Run each request inside a server span: a child of the caller's ``traceparent`` when it sends one."""

    def __init__(self, app: WSGIApp, tracer: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app = app
        self._tracer = tracer
        self._context = context
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._empty = context.Context()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        trace = self._trace
        method = environ.get("REQUEST_METHOD", "GET")
        traceparent = environ.get("HTTP_TRACEPARENT")  # the caller's trace, if it sends one
        parent = self._propagator.extract({"traceparent": traceparent, "tracestate": environ.get(
            "HTTP_TRACESTATE", "")}) if traceparent is not None else self._empty
        span = self._tracer.start_span(method, context=parent, kind=trace.SpanKind.SERVER, attributes={
            "http.request.method": method, "url.path": environ.get("PATH_INFO", "/"),
            "url.scheme": environ.get("wsgi.url_scheme", "http")})
        token = self._context.attach(trace.set_span_in_context(span, parent))

        def start(status, headers, exc_info=None):  # unannotated: annotations here would be evaluated per request
            code = int(status[:3])
            span.set_attribute("http.response.status_code", code)
            if code >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        except BaseException as exc:  # broad: any failure, an interrupt included, is recorded, then re-raised
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            request_id = environ.get(ENVIRON_KEY)  # set by api/web/request_id.py, inside this middleware
            if request_id is not None:
                span.set_attribute("iris.request_id", request_id)
            self._context.detach(token)
            span.end()


class TracedPublish:
    """The batcher's publish with a producer span per edge batch, linked both ways to each row's request span."""

    def __init__(self, publish: Publish, tracer: Any, queue: str) -> None:
        from opentelemetry import context, trace

        self._publish = publish
        self._tracer = tracer
        self._queue = queue
        self._empty = context.Context()
        self._trace = trace

    def __call__(self, rows: list[list[float]], task_ids: list[str], request_ids: list[str | None],
                 spans: list[Any]) -> None:
        """Publish inside the batch's span, whose trace context the message carries (shared/tracing.py)."""
        trace = self._trace
        links = []
        for span, task_id, request_id in zip(spans, task_ids, request_ids, strict=True):
            context = span.get_span_context()
            if context.is_valid:
                links.append(trace.Link(context, {"iris.task_id": task_id, "iris.request_id": request_id or ""}))
        # An empty parent context: a new trace per batch, whichever thread publishes it.
        with self._tracer.start_as_current_span(BATCH_SPAN, context=self._empty, kind=trace.SpanKind.PRODUCER,
                                                links=links, attributes={
                                                    "messaging.operation.type": "send",
                                                    "messaging.destination.name": self._queue,
                                                    "messaging.batch.message_count": len(rows),
                                                    "iris.task_ids": task_ids}) as batch:
            here = batch.get_span_context()
            for span, task_id in zip(spans, task_ids, strict=True):
                if span.is_recording():  # a request that gave up has ended its span
                    span.add_link(here, {"iris.task_id": task_id})
            self._publish(rows, task_ids, request_ids)
