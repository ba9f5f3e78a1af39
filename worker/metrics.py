"""The worker's Prometheus figures, served on WORKER_METRICS_PORT by its main process: task durations,
predictions by label and webhook outcomes (worker/webhooks.py); the served model and its loads, swaps and
refusals, read from the swapper when scraped; the queue messages dropped as malformed, by reason
(worker/message_guard.py), read from its tally when scraped; and with SHADOW_SAMPLE > 0 the challenger and its
agreement with the champion (worker/shadow.py).

The default pool, solo, runs tasks in that main process, so the port sees everything. A prefork pool runs them
in child processes whose task and prediction figures this port does not see (the model figures stay right: the
main process loads and swaps); run more solo workers instead, as docs/deployment.md, "Scaling out", advises.
"""

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from operator import itemgetter
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.settings import Settings
from worker.shadow import Shadow
from worker.swap import ModelSwapper

log = logging.getLogger(__name__)

# A batch predicts and stores in about a millisecond; a slow Redis stretches that to seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_label = itemgetter("pred_label")


class TaskMetrics:
    """The figures each task adds to: its duration, its predictions by label, and its webhook's outcomes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram("iris_task_duration_seconds", "Time to run a task, by task name.", ["task"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.predictions = Counter("iris_predictions", "Rows predicted, by predicted label.", ["label"],
                                   registry=registry)
        self.webhooks = Counter("iris_webhook_deliveries", "Webhook attempts and records by outcome: delivered, "
                                "retried, failed (attempts spent), refused (address not allowed), dropped "
                                "(WEBHOOK_MAX_PENDING reached).", ["outcome"], registry=registry)
        self._by_label: dict[str, Callable[[float], None]] = {}
        self._by_task: dict[str, Any] = {}

    def timer(self, task: str) -> Any:
        """Return a context manager that observes the time spent in it as one run of ``task``."""
        child = self._by_task.get(task)
        if child is None:  # labels() takes a lock and builds a key: once per task name, three of them
            child = self._by_task[task] = self.duration.labels(task)
        return child.time()

    def webhook(self, outcome: str) -> None:
        """Count one outcome of a task's webhook (worker/webhooks.py)."""
        self.webhooks.labels(outcome).inc()

    def predicted(self, results: list[dict[str, Any]]) -> None:
        """Count the predictions of one batch by label."""
        for label, count in Tally(map(_label, results)).items():
            inc = self._by_label.get(label)
            if inc is None:  # once per label, three of them
                inc = self._by_label[label] = self.predictions.labels(label).inc
            inc(count)


class SwapCollector(Collector):
    """The served model (and the challenger) and the swapper's counters, read when scraped: nothing on the task
    path."""

    def __init__(self, swapper: Callable[[], ModelSwapper | None],
                 challenger: Callable[[], ModelSwapper | None] = lambda: None) -> None:
        self._swapper = swapper
        self._challenger = challenger

    def collect(self) -> Iterator[Metric]:
        swapper = self._swapper()
        if swapper is None:  # before the model loads
            return
        challenger = self._challenger()
        counters = swapper.counters
        for name, value, text in (
                ("iris_model_loads", counters.loads, "Model versions loaded and warmed, the first one included."),
                ("iris_model_swaps", counters.swaps, "Model versions swapped in live."),
                ("iris_model_load_failures", counters.load_failures, "Model versions refused: they could not "
                                                                     "load, warm or meet the contract."),
                ("iris_model_check_failures", counters.check_failures, "Model checks the registry did not answer.")):
            yield CounterMetricFamily(name, text, value=value)
        if challenger is not None:  # shadowing is on (SHADOW_SAMPLE > 0)
            yield CounterMetricFamily("iris_challenger_load_failures", "Challenger versions refused: they could not "
                                      "load, warm or meet the contract.", value=challenger.counters.load_failures)
        info = GaugeMetricFamily("iris_model_info", "1 for the model name and version this worker serves (role "
                                 "champion) and the one it shadows (role challenger).",
                                 labels=["name", "version", "role"])
        for role, held in (("champion", swapper), ("challenger", challenger)):
            model = held.current if held is not None else None
            if model is not None:
                info.add_metric([model.name, model.version, role], 1)
        yield info


class ShadowCollector(Collector):
    """The rows the challenger shadowed, by agreement with the champion, and those it did not: read when scraped."""

    def __init__(self, shadow: Shadow) -> None:
        self._shadow = shadow

    def collect(self) -> Iterator[Metric]:
        shadow = self._shadow
        counts = shadow.counts
        family = CounterMetricFamily("iris_shadow_predictions", "Rows the challenger predicted after the champion "
                                     "answered, by whether both gave the same label.", labels=["agree"])
        family.add_metric(["true"], counts.agreed)
        family.add_metric(["false"], counts.disagreed)
        yield family
        yield CounterMetricFamily("iris_shadow_dropped_rows", "Sampled rows not shadowed: SHADOW_QUEUE_ROWS were "
                                  "waiting already.", value=shadow.queue.dropped)
        yield CounterMetricFamily("iris_shadow_failed_rows", "Sampled rows the challenger raised on.",
                                  value=counts.failed)


class RejectionCollector(Collector):
    """The queue messages dropped as malformed, by reason: a tally the consumer adds to, read when scraped."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("iris_rejected_messages", "Queue messages dropped as malformed before any task "
                                     "ran, by reason.", labels=["reason"])
        for reason, count in sorted(self._counts.items()):
            family.add_metric([reason], count)
        yield family


class WorkerMetrics:
    """This worker's registry, the task figures, and the HTTP server that serves them."""

    def __init__(self, settings: Settings, swapper: Callable[[], ModelSwapper | None],
                 rejected: Mapping[str, int] | None = None,
                 challenger: Callable[[], ModelSwapper | None] = lambda: None, shadow: Shadow | None = None) -> None:
        self.port = settings.worker_metrics_port
        self.registry = CollectorRegistry()
        self.tasks = TaskMetrics(self.registry)
        self.registry.register(SwapCollector(swapper, challenger))
        if shadow is not None:
            self.registry.register(ShadowCollector(shadow))
        if rejected is not None:
            self.registry.register(RejectionCollector(rejected))
        self._server: Any = None

    def serve(self, sender: Any = None, **_: Any) -> None:
        """Serve /metrics on the port (worker_init: the worker's main process, never a mere importer)."""
        if not self.port or self._server is not None:
            return
        pool = str(getattr(sender, "pool_cls", "")).lower()
        if "prefork" in pool or "processes" in pool:
            log.warning("metrics: a prefork pool counts tasks and predictions in its child processes, which port "
                        "%d does not see; its model figures are right", self.port)
        try:
            server = make_server("", self.port, make_wsgi_app(self.registry), _Server, handler_class=_Quiet)
        except OSError as exc:  # a taken port costs the figures, never the predictions
            log.error("metrics: cannot serve on port %d: %s", self.port, exc)
            return
        # poll_interval=None: the thread sleeps until a scrape connects. prometheus_client's start_http_server
        # wakes it twice a second to look for a shutdown; beside a solo worker's busy main thread that cost
        # a visible share of the stack's req/s in alternating runs (docs/observability.md, "What metrics cost").
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None}, name="iris-metrics",
                         daemon=True).start()
        self._server = server
        log.info("metrics on port %d", self.port)

    def stop(self, **_: Any) -> None:
        """Close the server's socket at shutdown (its thread is a daemon: it ends with the process)."""
        if self._server is not None:
            self._server.server_close()
            self._server = None


class _Server(ThreadingMixIn, WSGIServer):
    """A scrape per thread, so a slow scraper never holds up the next."""

    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    """No access line per scrape on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
