"""With an OTLP endpoint set, one request's trace is connected across the API, its edge batch and the worker.

A real OTLP/HTTP receiver (this test's own HTTP server, decoding the exporter's protobuf), a real API server
(granian, as deployed) and a real ``celery worker``. The exporters' schedule delay is a minute, so every span
received was exported when its process shut down: the test checks that flush too.
"""

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from tests.helpers import SEED_EXAMPLE, WorkerProcess, api_server

pytestmark = pytest.mark.integration

SYNC_REQUESTS = 12
BATCH_SPAN = "iris.classify_rows publish"


@dataclass
class Received:
    """One exported span, as the collector sees it."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    links: list[tuple[str, str]]
    attributes: dict[str, Any] = field(default_factory=dict)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on a free port: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Received] = []
        self.lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend(Received(
                        service=attrs.get("service.name", ""), name=s.name, kind=s.kind, trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        attributes={a.key: _value(a.value) for a in s.attributes}) for s in scope.spans)


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if self.path == "/v1/traces" else 404
        if status == 200:
            self.server.add(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def post(url: str, body: Any, request_id: str) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "X-Request-ID": request_id})
    with urllib.request.urlopen(request, timeout=15) as answer:
        data: dict[str, Any] = json.load(answer)
        return data


def test_one_requests_trace_connects_the_api_its_edge_batch_and_the_worker(
        stack_env: dict[str, str], collector: Collector) -> None:
    queue = f"iris-trace-{uuid.uuid4().hex[:8]}"  # no other test's worker takes these messages
    env = {**stack_env, "IRIS_QUEUE": queue,
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
           "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    worker = WorkerProcess(env, queue=queue).start()
    try:
        # One server process and one batch in flight: the rows of requests sent at once gather in batches.
        with api_server(env, server="api", WEB_CONCURRENCY="1", BATCH_MAX_IN_FLIGHT="1") as url:
            start = threading.Barrier(SYNC_REQUESTS)

            def classify(i: int) -> dict[str, Any]:
                start.wait(10)
                return post(f"{url}/v1/classify", SEED_EXAMPLE, f"trace-sync-{i}")

            with ThreadPoolExecutor(SYNC_REQUESTS) as pool:
                answers = list(pool.map(classify, range(SYNC_REQUESTS)))
            assert all(a["message"] == "success" for a in answers), answers
            queued = post(f"{url}/v1/classify/async", SEED_EXAMPLE, "trace-async")["data"]
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                with urllib.request.urlopen(f"{url}{queued['status_url']}", timeout=5) as answer:
                    if json.load(answer)["data"]["status"] == "SUCCESS":
                        break
                time.sleep(0.05)
            else:
                raise AssertionError("the async task did not finish")
    finally:
        worker.stop()
    spans = collector.spans
    assert spans, "nothing exported at shutdown"
    assert {s.service for s in spans} == {"iris-api", "iris-worker"}
    assert not [s.name for s in spans if s.service == "iris-worker" and not s.name.startswith("iris.classify")]

    def by_request(name: str, request_id: str) -> Received:
        (span,) = [s for s in spans if s.service == "iris-api" and s.name == name
                   and s.attributes.get("iris.request_id") == request_id]
        return span

    batches = {s.span_id: s for s in spans if s.name == BATCH_SPAN}
    worker_spans = [s for s in spans if s.service == "iris-worker"]
    for i in range(SYNC_REQUESTS):
        request = by_request("POST /v1/classify", f"trace-sync-{i}")
        assert request.attributes["http.response.status_code"] == 200
        # The request's span links to its batch, and the batch links back to the request.
        (batch,) = [b for b in batches.values() if (request.trace_id, request.span_id) in b.links]
        assert (batch.trace_id, batch.span_id) in request.links
        assert batch.trace_id != request.trace_id and not batch.parent_id  # a batch is a trace of its own
        # The worker's span is the batch span's child, in the batch's trace.
        (processed,) = [w for w in worker_spans if w.parent_id == batch.span_id]
        assert processed.name == "iris.classify_rows process" and processed.trace_id == batch.trace_id
        assert processed.attributes["messaging.batch.message_count"] == len(batch.links)
    assert max(len(b.links) for b in batches.values()) > 1, "no batch held more than one request's row"
    request = by_request("POST /v1/classify/async", "trace-async")
    (processed,) = [w for w in worker_spans if w.parent_id == request.span_id]
    assert processed.name == "iris.classify process" and processed.trace_id == request.trace_id
    assert processed.attributes["iris.request_id"] == "trace-async"
    assert processed.kind == ProtoSpan.SPAN_KIND_CONSUMER
