"""The Flask extension: build the API's services once per app, and hand them to routes (declared once, here)."""

from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app

from api.batching.batcher import EdgeBatcher
from api.batching.publisher import EdgePublisher
from api.batching.replies import ReplyListener, max_reply_bytes
from api.broker.admission import Admission
from api.broker.circuit import Circuit
from api.broker.readiness import Readiness, WorkerCheck
from api.broker.results_backend import polling_backend_url
from api.broker.timeouts import bound_celery, redis_client
from api.observability import metrics, tracing
from api.service import ClassifyService
from shared.celery_app import create_celery, rows_queue
from shared.settings import Settings

KEY = "iris"


@dataclass(frozen=True)
class Services:
    """What routes use: the settings, the classify/poll service and the readiness check."""

    settings: Settings
    celery: Celery
    service: ClassifyService
    readiness: Readiness
    circuit: Circuit
    publisher: EdgePublisher
    admission: Admission


def init_app(app: Flask, settings: Settings) -> Services:
    """Create the clients and services for ``app``; nothing connects until the first request."""
    celery = create_celery(settings)
    bound_celery(celery, settings.api_redis_timeout_seconds)
    # backend_cls, not conf.result_backend: Celery's conf prefers CELERY_RESULT_BACKEND from the environment
    # to any value assigned, so a deployment that sets it would get the subscribing backend (celery#8166).
    celery.backend_cls = polling_backend_url(settings.celery_result_backend)
    results = redis_client(settings.celery_result_backend, settings.api_redis_timeout_seconds)
    circuit = Circuit(open_seconds=1.0)
    # QUEUE_MAX_LENGTH and QUEUE_MAX_MB bound both queues together: the public one and the edge batches'
    # (api/broker/admission.py).
    admission = Admission(celery, (settings.iris_queue, settings.rows_queue), settings.queue_max_length, circuit,
                          fast=settings.fast_paths, max_bytes=int(settings.queue_max_mb * 1e6))
    # Build every object first (each reply channel and publish connection opens in its process, on its first
    # request), then connect the two that answer back: a reply goes to the service, a lost batch to the batcher.
    replies = ReplyListener(settings.celery_result_backend, settings.key_prefix,
                            max_bytes=max_reply_bytes(settings.batch_max_size, settings.batch_max_rows),
                            on_reject=metrics.count_rejected_replies(app, settings))
    publisher = EdgePublisher(celery, rows_queue(settings), replies.ensure_started, circuit, settings.fast_paths,
                              hold_seconds=settings.row_result_hold_seconds, marks=settings.issued_prefix)
    publish = metrics.observe_batches(app, settings, publisher)  # iris_batch_size (METRICS=false: as is)
    # With tracing on, each batch publishes inside a span linked to its rows' requests; off: publish as is.
    # Outermost: it alone takes the rows' trace contexts, as a fourth argument, and passes the three on.
    publish, trace = tracing.edge_batch(publish, settings.rows_queue)
    batcher = EdgeBatcher(publish, settings.batch_max_size, settings.batch_max_wait_ms,
                          settings.batch_max_in_flight, reply_timeout=min(settings.sync_timeout_seconds, 2.0),
                          trace=trace)
    service = ClassifyService(settings, celery, batcher, publisher, replies, admission, circuit, results)
    replies.connect(service.deliver)
    publisher.connect(lost=batcher.fail)
    services = Services(
        settings=settings,
        celery=celery,
        service=service,
        readiness=Readiness(results, admission, WorkerCheck(celery, circuit), circuit),
        circuit=circuit,
        publisher=publisher,
        admission=admission,
    )
    app.extensions[KEY] = services
    return services


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions[KEY]


def settings() -> Settings:
    """Return the current app's settings: the one place the API reads them from."""
    return current_app.extensions[KEY].settings


def service() -> ClassifyService:
    """Return the current app's classify/poll service."""
    return current_app.extensions[KEY].service
