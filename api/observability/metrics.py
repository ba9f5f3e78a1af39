"""Prometheus metrics at GET /metrics: requests, their duration and edge batch sizes summed over the server's
worker processes, and the queue depth and the workers' models, read from the API's services when scraped.

Under granian or gunicorn each worker process writes its counters and histograms to its own files in
PROMETHEUS_MULTIPROC_DIR (api/observability/multiprocess_dir.py prepares it in the main process), and a scrape
of any process sums
them all, the files of workers that died included, so totals never drop. Without that variable (the Flask test
client, one process) the figures live in this app's own registry. The queue depth and the model info are read
by the process that answers the scrape, once, so they are never counted once per process. Malformed messages
on the reply channels are counted where they are skipped (api/batching/replies.py): rare, and off the request path.
"""

import logging
import os
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from flask import Flask, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.batching.batcher import Publisher
from api.broker.admission import Admission
from api.broker.circuit import Circuit
from api.broker.readiness import Readiness, served_models
from api.errors import QueueUnavailable
from api.observability.multiprocess_dir import ENV
from api.observability.observe_many import observe_many
from shared.settings import Settings

log = logging.getLogger(__name__)

KEY = "iris.metrics"
REQUEST = "iris.metrics.request"  # environ key: the Flask request made for it (RecordingRequest)
UNMATCHED = "unmatched"  # the endpoint label of requests no route matched (404, 405), whatever their path
# Sync answers take milliseconds; a 504 comes after SYNC_TIMEOUT_SECONDS (10 s by default).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Edge batches hold up to BATCH_MAX_SIZE rows (64 by default); powers of two read well on a heatmap.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ApiMetrics:
    """The figures each request and each published edge batch add to, and the registry a scrape reads.

    A request only queues its endpoint, status and duration; a thread of each process moves the queued figures
    into prometheus-client's values every ``FLUSH_SECONDS``, one write per series, and a scrape first moves its
    own process's. So a scrape sums every process's requests up to about a second ago. Recording a request
    costs a deque append instead of three locked writes to memory-mapped files (docs/observability.md, "What
    metrics cost"), and so does observing an edge batch's size.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self, multiprocess: bool, fast: bool = True) -> None:
        self.registry = CollectorRegistry()
        # In multiprocess mode the figures go to this process's files, and the registry reads everyone's.
        own = None if multiprocess else self.registry
        if multiprocess:
            MultiProcessCollector(self.registry)
        self.requests = Counter("iris_requests", "HTTP requests answered, by Flask endpoint and status.",
                                ["endpoint", "status"], registry=own)
        self.duration = Histogram("iris_request_duration_seconds", "Time to answer a request, by Flask endpoint.",
                                  ["endpoint"], buckets=DURATION_BUCKETS, registry=own)
        self.batch_size = Histogram("iris_batch_size", "Rows in each edge batch published as one task message.",
                                    buckets=BATCH_BUCKETS, registry=own)
        self.rejected_replies = Counter("iris_rejected_replies", "Messages on the API's reply channels that were "
                                        "not a worker's reply, skipped.", registry=own)
        self._fast = fast
        self._queued: deque[tuple[str, int, float]] = deque()  # append and popleft are thread-safe
        self._batches: deque[int] = deque()  # rows of each published edge batch, flushed the same way
        self._flushing = threading.Lock()
        self._pid: int | None = None

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration (in the shared figures within FLUSH_SECONDS)."""
        self._queued.append((endpoint, status, seconds))
        if self._pid != os.getpid():  # the first request of this process (servers fork after the app is built)
            self._start_flusher()

    def record_batch(self, rows: int) -> None:
        """Observe one published edge batch's rows (in the shared histogram within FLUSH_SECONDS)."""
        self._batches.append(rows)
        if self._pid != os.getpid():
            self._start_flusher()

    def flush(self) -> None:
        """Move the queued figures into the counter and the histograms, aggregated per series."""
        with self._flushing:
            batches = self._batches
            sizes = [batches.popleft() for _ in range(len(batches))]
            if sizes:
                observe_many(self.batch_size, sizes, fast=self._fast)
            counts: Tally[tuple[str, int]] = Tally()
            durations: dict[str, list[float]] = {}
            queued = self._queued
            while queued:
                endpoint, status, seconds = queued.popleft()
                counts[(endpoint, status)] += 1
                durations.setdefault(endpoint, []).append(seconds)
            for (endpoint, status), count in counts.items():
                self.requests.labels(endpoint, str(status)).inc(count)
            for endpoint, values in durations.items():
                observe_many(self.duration.labels(endpoint), values, fast=self._fast)

    def _start_flusher(self) -> None:
        with self._flushing:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="iris-metrics-flusher", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            try:
                self.flush()
            except Exception as exc:  # broad: this thread must outlive any failure; a figure is never worth a request
                log.warning("metrics: cannot record request figures: %s", exc)


class BrokerState(Protocol):
    """What the state collector reads: api.extension.Services has these, and tests pass stand-ins."""

    @property
    def circuit(self) -> Circuit: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def readiness(self) -> Readiness: ...


class StateCollector(Collector):
    """iris_queue_depth, iris_queue_messages and iris_model_info, read at scrape time from what the API's services
    already hold."""

    def __init__(self, services: BrokerState) -> None:
        self._services = services
        self._guard = services.circuit.guard("reading the queue depth for /metrics")

    def collect(self) -> Iterator[Metric]:
        services = self._services
        if not services.circuit.is_open():
            try:
                # The admission's reading, at most 0.25 s old; a stale one costs one Redis call per scrape.
                with self._guard:
                    depths = services.admission.depths()
            except QueueUnavailable:  # Redis is down (logged once by the guard): no sample, rather than a made-up 0
                pass
            else:
                # The sum is what QUEUE_MAX_LENGTH bounds; the breakdown tells public tasks from edge batches.
                yield GaugeMetricFamily("iris_queue_depth", "Task messages waiting in the API's queues, together.",
                                        value=sum(depths.values()))
                by_queue = GaugeMetricFamily("iris_queue_messages", "Task messages waiting in each queue.",
                                             labels=["queue"])
                for queue, depth in depths.items():
                    by_queue.add_metric([queue], depth)
                yield by_queue
        info = GaugeMetricFamily("iris_model_info", "1 for each model name and version a worker serves (role "
                                 "champion) or shadows (role challenger).", labels=["name", "version", "role"])
        try:
            # /readyz's cached broadcast (2 s); when older, the scrape waits up to 1.5 s for the workers' replies.
            workers = services.readiness.workers.workers()
        except QueueUnavailable:  # no answer within the wait: no model info this scrape
            workers = {}
        for role, name, version in sorted(served_models(workers)):
            info.add_metric([name, version, role], 1)
        yield info


class RecordingRequest(Request):
    """Flask's request, which leaves itself in the WSGI environ, so the middleware reads its matched rule."""

    def __init__(self, environ: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(environ, *args, **kwargs)
        environ[REQUEST] = self


class RequestMetrics:
    """Count each answer by endpoint and status and observe its duration, outside Flask's hooks.

    A WSGI middleware plus a request class rather than an ``after_request`` hook: Flask's hook machinery and
    its context-local proxies cost more than the figures themselves (docs/observability.md has the figures and the
    command). Every answer passes here, the envelopes of handlers.py, auth's 401
    and routing's 404/405 included; the rule is the one Flask matched, so raw paths never become labels.
    """

    def __init__(self, app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]],
                 record: Callable[[str, int, float], None]) -> None:
        self.app = app
        self._record = record

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        status: list[str] = []

        def start(line, headers, exc_info=None):  # unannotated: annotations here would be evaluated per request
            status.append(line)
            return start_response(line, headers, exc_info)

        body = self.app(environ, start)  # Flask has answered, start_response included, when this returns
        # pop: the request refers to this environ, and a cycle left here would be the garbage collector's to find
        # (Flask breaks its own the same way); measured, leaving it cost more than every figure together.
        seen = environ.pop(REQUEST, None)
        rule = seen.url_rule if seen is not None else None
        if status:
            self._record(rule.endpoint if rule is not None else UNMATCHED, int(status[-1][:3]),
                         time.perf_counter() - started)
        return body


def for_app(app: Flask, settings: Settings) -> ApiMetrics | None:
    """Return ``app``'s metrics, made on first use; None when METRICS is off."""
    if not settings.metrics:
        return None
    metrics: ApiMetrics | None = app.extensions.get(KEY)
    if metrics is None:
        metrics = app.extensions[KEY] = ApiMetrics(multiprocess=bool(os.environ.get(ENV)), fast=settings.fast_paths)
    return metrics


def observe_batches(app: Flask, settings: Settings, publish: Publisher) -> Publisher:
    """Wrap the edge batcher's ``publish`` so each batch it publishes is observed in iris_batch_size."""
    metrics = for_app(app, settings)
    if metrics is None:
        return publish
    observe = metrics.record_batch

    def publish_observed(rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        publish(rows, task_ids, request_ids)
        observe(len(rows))  # after the publish: a batch that failed to go out was not a batch

    return publish_observed


def count_rejected_replies(app: Flask, settings: Settings) -> Callable[[], None] | None:
    """Return what counts one skipped reply-channel message in iris_rejected_replies_total; None when METRICS is off."""
    metrics = for_app(app, settings)
    return metrics.rejected_replies.inc if metrics is not None else None


def init_app(app: Flask, settings: Settings, services: BrokerState) -> None:
    """Count every answer by endpoint and status (the envelopes of handlers.py included) and serve GET /metrics."""
    metrics = for_app(app, settings)
    if metrics is None:
        return
    metrics.registry.register(StateCollector(services))

    def scrape() -> Response:
        """Answer the figures in Prometheus' text format, this process's latest requests included."""
        metrics.flush()
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", scrape, methods=["GET"])
    app.request_class = RecordingRequest
    app.wsgi_app = RequestMetrics(app.wsgi_app, metrics.record)  # type: ignore[method-assign]
