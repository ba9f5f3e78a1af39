"""The worker's spans: one consumer span per task, the child of the span its message's ``traceparent`` names.

An edge batch's message carries its batch span (api/observability/tracing.py), an async or batch request's message its
request span, so each task's span joins the trace it was sent from. Connected through Celery's task
signals only when the OTel environment turns tracing on (shared/tracing.py); otherwise nothing is.
"""

from typing import Any

from celery import Task, signals

from shared import tasks as names
from shared import tracing

# The tasks that serve requests; the watchdog's probes and control tasks would only add a trace every few seconds.
TRACED_TASKS = frozenset({names.CLASSIFY, names.CLASSIFY_BATCH, names.CLASSIFY_ROWS, names.CLASSIFY_TABLE})
# Task id -> (span, context token) of the tasks running in this process (one at a time with the solo pool).
_running: dict[str, tuple[Any, Any]] = {}


def install() -> None:
    """Trace this worker's tasks when the OTel environment asks for it (call from the entry point)."""
    if not tracing.enabled():
        return
    signals.worker_init.connect(_setup, weak=False, dispatch_uid="iris-tracing-setup")
    signals.task_prerun.connect(_start, weak=False, dispatch_uid="iris-tracing-start")
    signals.task_postrun.connect(_end, weak=False, dispatch_uid="iris-tracing-end")
    # A prefork child leaves with os._exit, which runs no atexit hook: export its spans first.
    signals.worker_process_shutdown.connect(_flush, weak=False, dispatch_uid="iris-tracing-flush")


def _setup(**_: Any) -> None:
    """Start the exporter in the worker's main process; the SDK restarts its thread in forked pool children."""
    tracing.setup("iris-worker")


def _flush(**_: Any) -> None:
    tracing.flush()


def _start(task_id: str, task: Task, args: Any = None, **_: Any) -> None:
    """Open the task's consumer span under the trace context its message carries, and make it current."""
    provider = tracing.provider()
    if provider is None or task.name not in TRACED_TASKS:
        return
    from opentelemetry import context, trace

    request = task.request
    carrier = {key: value for key in tracing.HEADERS if (value := getattr(request, key, None)) is not None}
    parent = tracing.extract(carrier)
    attributes: dict[str, Any] = {"messaging.operation.type": "process", "messaging.message.id": task_id,
                                  "celery.task_name": task.name}
    queue = (request.delivery_info or {}).get("routing_key")
    if queue:
        attributes["messaging.destination.name"] = queue
    if task.name == names.CLASSIFY_ROWS and args:
        attributes["messaging.batch.message_count"] = len(args[0])
    request_id = getattr(request, "request_id", None)  # async and batch requests name theirs
    if request_id is not None:
        attributes["iris.request_id"] = request_id
    span = provider.get_tracer(__name__).start_span(f"{task.name} process", context=parent,
                                                   kind=trace.SpanKind.CONSUMER, attributes=attributes)
    _running[task_id] = (span, context.attach(trace.set_span_in_context(span, parent)))


def _end(task_id: str, state: str | None = None, retval: Any = None, **_: Any) -> None:
    """Close the task's span with its final state; a failed task's span is an error."""
    started = _running.pop(task_id, None)
    if started is None:
        return
    from opentelemetry import context, trace

    span, token = started
    span.set_attribute("celery.state", state or "")
    if state not in (None, "SUCCESS"):
        if isinstance(retval, BaseException):
            span.record_exception(retval)
        span.set_status(trace.Status(trace.StatusCode.ERROR, state))
    context.detach(token)
    span.end()
