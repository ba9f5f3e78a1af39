"""With tracing on: a server span per request, and an edge batch span linked both ways to its requests' spans,
whose trace context both publish paths put in the message; async tasks carry their request's span.

Spans go to an in-memory exporter and messages to kombu's in-memory broker: no network.
"""

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Exchange, Queue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, use_span
from pydantic import SecretStr

from api import create_app
from api.batching.batcher import EdgeBatcher
from api.batching.publisher import EdgePublisher
from api.broker.circuit import Circuit
from api.observability import tracing
from api.observability.tracing import BATCH_SPAN
from shared import tasks
from shared import tracing as shared_tracing
from shared.settings import Settings
from tests.unit.api.batching.queue_rows import queue_row

DOWN = "redis://127.0.0.1:1/0"
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Turn tracing on in this process with an in-memory exporter, and off again after the test."""
    exporter = InMemorySpanExporter()
    assert shared_tracing.setup("iris-test", exporter=exporter) is not None
    yield exporter
    shared_tracing.shutdown()


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    shared_tracing.flush()
    return list(exporter.get_finished_spans())


def traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def take(celery: Celery, queue: str) -> Any:
    with celery.connection_for_read() as conn:
        return conn.default_channel.basic_get(queue, no_ack=True)


def test_each_request_gets_a_server_span_named_by_its_route_with_its_request_id(
        spans: InMemorySpanExporter) -> None:
    client = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN)).test_client()
    answer = client.get("/livez", headers={"X-Request-ID": "req-live"})
    missing = client.get("/nowhere")
    server = [s for s in finished(spans) if s.kind == SpanKind.SERVER]
    assert [s.name for s in server] == ["GET /livez", "GET"]  # no route matched: the method alone
    live = server[0]
    assert live.attributes is not None
    assert live.attributes["http.route"] == "/livez" and live.attributes["http.response.status_code"] == 200
    assert live.attributes["iris.request_id"] == answer.headers["X-Request-ID"] == "req-live"
    assert server[1].attributes is not None and server[1].attributes["http.response.status_code"] == 404
    assert missing.status_code == 404


def test_a_request_that_sends_a_traceparent_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    client = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN)).test_client()
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client.get("/livez", headers={"traceparent": caller})
    (server,) = finished(spans)
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{server.parent.span_id:016x}" == "b7ad6b7169203331"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "documented"])
def test_an_edge_batch_span_links_to_every_rows_request_span_and_travels_in_the_message(
        spans: InMemorySpanExporter, celery: Celery, queue: str, fast: bool) -> None:
    publisher = EdgePublisher(celery, Queue(queue, exchange=Exchange(""), routing_key=queue),
                              lambda: "iris:reply:test", Circuit(open_seconds=60), fast)
    publish, trace = tracing.edge_batch(publisher, queue)
    batcher = EdgeBatcher(publish, max_size=8, max_wait_ms=0, max_in_flight=1, reply_timeout=2.0, trace=trace)
    tracer = shared_tracing.provider().get_tracer("test")
    waiting = []
    for request_id in ("req-1", "req-2"):  # two requests, each waiting for its row's answer
        span = tracer.start_span(f"POST /v1/classify {request_id}", kind=SpanKind.SERVER)
        with use_span(span):
            queue_row(batcher, ROW, request_id)
        waiting.append(span)
    batcher.flush_once()  # what the flusher thread does
    for span in waiting:
        span.end()
    publisher.close()
    done = finished(spans)
    (batch,) = [s for s in done if s.name == BATCH_SPAN]
    requests = [s for s in done if s.kind == SpanKind.SERVER]
    assert batch.kind == SpanKind.PRODUCER and batch.parent is None  # a trace of its own
    assert batch.attributes is not None and batch.attributes["messaging.batch.message_count"] == 2
    assert [link.context for link in batch.links] == [s.context for s in requests]
    assert [link.attributes["iris.request_id"] for link in batch.links if link.attributes] == ["req-1", "req-2"]
    for request in requests:  # and back, so a request's span leads to its batch
        assert [link.context for link in request.links] == [batch.context]
    message = take(celery, queue)
    assert message.headers["traceparent"] == traceparent(batch)
    assert message.headers["request_ids"] == ["req-1", "req-2"]


def test_an_async_task_carries_its_request_span_as_parent(spans: InMemorySpanExporter, celery: Celery,
                                                          queue: str) -> None:
    tracer = shared_tracing.provider().get_tracer("test")
    with tracer.start_as_current_span("POST /v1/classify/async", kind=SpanKind.SERVER):
        celery.send_task(tasks.CLASSIFY, args=[{}], queue=queue, headers={"request_id": "req-async"})
    (request,) = finished(spans)
    message = take(celery, queue)
    assert message.headers["traceparent"] == traceparent(request)
    assert message.headers["request_id"] == "req-async"


def test_with_tracing_off_the_batcher_keeps_the_publisher_and_messages_carry_no_trace(
        celery: Celery, queue: str) -> None:
    assert shared_tracing.provider() is None
    publisher = EdgePublisher(celery, Queue(queue, exchange=Exchange(""), routing_key=queue),
                              lambda: "iris:reply:test", Circuit(open_seconds=60), True)
    publish, trace = tracing.edge_batch(publisher, queue)
    assert publish is publisher and trace is None
    batcher = EdgeBatcher(publish, max_size=8, max_wait_ms=0, max_in_flight=1, reply_timeout=2.0, trace=trace)
    pending = queue_row(batcher, ROW, "req-off")
    batcher.flush_once()
    publisher.close()
    assert pending.trace is None
    assert not {"traceparent", "tracestate"} & set(take(celery, queue).headers)


def test_a_request_refused_by_auth_still_gets_a_server_span_with_its_path_and_401(
        spans: InMemorySpanExporter) -> None:
    settings = Settings(celery_broker_url=DOWN, celery_result_backend=DOWN, api_keys=SecretStr("ci:s3cret-0123456789"))
    answer = create_app(settings).test_client().post("/v1/classify", json={})
    (server,) = finished(spans)
    assert answer.status_code == 401
    # Refused by api/web/auth.py's hook after Flask matched the route: the route names the span.
    assert server.name == "POST /v1/classify" and server.attributes is not None
    assert server.attributes["url.path"] == "/v1/classify" and server.attributes["http.response.status_code"] == 401
