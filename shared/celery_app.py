"""The Celery app factory used by the API, the workers and any Python client."""

import ssl

from celery import Celery
from kombu import Exchange, Queue

from shared import transport
from shared.settings import Settings, get_settings

# What a rediss:// URL means when its query names no ssl_* parameters (those in the URL override this): verify
# the server against the system's CAs, as redis-py does. Otherwise kombu would connect without verifying, the
# transport subclass without TLS at all, and Celery's result backend would refuse to start.
TLS_DEFAULTS = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_amqp(url: str) -> bool:
    """Tell whether ``url`` names a RabbitMQ (AMQP 0-9-1) broker rather than Redis."""
    return url.startswith(AMQP_SCHEMES)


def create_celery(settings: Settings | None = None, name: str = "iris") -> Celery:
    """Build a Celery app wired to the configured broker and result backend, JSON only."""
    settings = settings or get_settings()
    app = Celery(name, broker=settings.celery_broker_url, backend=settings.celery_result_backend,
                 set_as_current=False)
    fast_fail = {"socket_timeout": 5, "socket_connect_timeout": 2, "retry_on_timeout": True}
    # TCP keepalive finds a peer that vanished without a FIN (failover, a proxy that dropped the connection),
    # and kombu's health checks drop a pub/sub or BRPOP connection that stopped answering. What neither
    # reaches, worker/watchdog.py catches.
    keepalive = {"socket_keepalive": True, "health_check_interval": settings.broker_health_check_interval_seconds}
    # Each worker sweeps overdue unacknowledged messages back to the queue every interval x throttle seconds:
    # kombu's 10 x 10 added up to 100 s to a dead worker's redelivery; 5 s here. A worker killed mid-sweep
    # holds the sweep lock until it expires: 30 s, not 300. Overlapping sweeps still restore a message once.
    redelivery = {"unacked_restore_interval": 5, "unacked_restore_throttle": 1, "unacked_mutex_expire": 30}
    app.conf.update(
        # Never pickle: a queue that accepts pickle runs whatever anyone with broker access sends.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=settings.iris_queue,
        task_routes={"iris.*": {"queue": settings.iris_queue}},
        # A task is acknowledged after it ran, and comes back if its worker dies mid-way.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Redis hands an unacknowledged message to another worker after this many seconds.
        # The task queue's messages are ledgered until a worker holds them (shared/transport/ledger.py); the
        # edge batches' rows queue is consumed without acknowledgements, and the API re-sends a lost row.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds, **fast_fail,
                                  **keepalive, **redelivery, "ledger_queues": (settings.iris_queue,),
                                  "ledger_max_age": settings.result_expires_seconds},
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        redis_socket_timeout=5,
        redis_socket_connect_timeout=2,
        redis_retry_on_timeout=True,
        result_expires=settings.result_expires_seconds,
        task_track_started=True,
        # Fail a publish within about a second when Redis is down, rather than hang the caller.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.3,
                                   "interval_max": 0.5},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        # Tasks are milliseconds long: prefetch a few so a worker never waits on the broker.
        worker_prefetch_multiplier=8,
        worker_send_task_events=False,
        task_time_limit=60,
        task_soft_time_limit=30,
    )
    if is_amqp(settings.celery_broker_url):
        _hold_to_rabbitmq(app, settings)
    redis_broker = settings.celery_broker_url.startswith(("redis://", "rediss://"))
    if redis_broker and ";" not in settings.celery_broker_url:
        # kombu's transport with a lost-reply fix, and unless FAST_PATHS=0, minus a new client per publish and ack
        # and minus the round trip of acknowledging a no-ack message.
        app.conf.broker_transport = transport.FAST if settings.fast_paths else transport.GUARDED
    if settings.celery_broker_url.startswith("rediss://"):
        app.conf.broker_use_ssl = dict(TLS_DEFAULTS)
    if settings.celery_result_backend.startswith("rediss://"):
        app.conf.redis_backend_use_ssl = dict(TLS_DEFAULTS)
    return app


def _hold_to_rabbitmq(app: Celery, settings: Settings) -> None:
    """Make RabbitMQ keep what it accepted: a quorum task queue and publishes that wait for the broker's confirm.

    A quorum queue is replicated and written to disk before the broker confirms a publish, and RabbitMQ gives a
    delivery back the moment its consumer's connection closes, so neither a killed worker nor a broker restart
    loses an accepted task (tests/integration/test_no_task_lost.py). The rows queue stays classic: a batch there
    is answered within SYNC_TIMEOUT_SECONDS or re-sent by the API to this queue. Redis's transport options
    (visibility timeout, sweeps, socket options) mean nothing to AMQP and are not passed.
    """
    name = settings.iris_queue
    app.conf.task_queues = [Queue(name, exchange=Exchange(name), routing_key=name,
                                  queue_arguments={"x-queue-type": "quorum"})]
    app.conf.task_create_missing_queue_type = "quorum"  # any other task queue a worker's -Q names, too
    app.conf.broker_transport_options = {"confirm_publish": True}


def rows_queue(settings: Settings) -> Queue:
    """Return the queue of the API's edge batches, which workers consume without acknowledgements.

    A sync request's rows are answered in-band within SYNC_TIMEOUT_SECONDS or not at all, so Redis keeping a
    delivered batch for redelivery after VISIBILITY_TIMEOUT_SECONDS (two round trips and a copy of the message
    per batch, a third of a worker's CPU per one-row batch) buys nothing the API does not do better: when a
    row's wait ends unanswered, the API sends it again as an acknowledged ``iris.classify`` task under the same
    id (api/service.py), so a batch lost with a killed worker is answered at its poll URL within seconds, not
    minutes. The default exchange routes by queue name, with no binding to lose when Redis restarts empty.
    """
    name = settings.rows_queue
    return Queue(name, exchange=Exchange(""), routing_key=name, no_ack=True)
