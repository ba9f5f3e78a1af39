"""Bound every Redis wait of the API, so a request answers within seconds whether Redis refuses or hangs.

The shared Celery settings (shared/celery_app.py) suit workers, which may wait for Redis. The API must
answer its clients instead: every socket read, connect and retry here is capped at API_REDIS_TIMEOUT_SECONDS,
and nothing retries a timeout (a timeout retried doubles the wait, and a hung Redis times out every time).
"""

import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

# One retry, at once, and only when a connection was refused or dropped: that is a kept connection gone
# stale after Redis restarted, and a fresh one answers. A timeout is never retried.
_ONE_RETRY_ON_DROP = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


# Connections one API process keeps to the result backend: redis-py's own default bound.
MAX_CONNECTIONS = 100


def redis_client(url: str, timeout: float) -> redis.Redis:
    """Return a Redis client whose every call gives up after ``timeout`` seconds.

    Its pool blocks for a free connection (up to ``timeout``) rather than raising at once: more concurrent
    requests than MAX_CONNECTIONS is a busy process, not a Redis outage, and must not trip the circuit.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_connect_timeout=timeout,
        socket_timeout=timeout, retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    return redis.Redis(connection_pool=pool)


def bound_celery(celery: Celery, timeout: float) -> None:
    """Cap the API's Celery client: broker and backend sockets, publish retries and reconnects."""
    conf = celery.conf
    # max_retries: kombu otherwise retries a refused connect for a channel after sleeping 2 s.
    conf.broker_transport_options = {**conf.broker_transport_options, "socket_timeout": timeout,
                                     "socket_connect_timeout": timeout, "retry_on_timeout": False,
                                     "max_retries": 0}
    conf.broker_connection_timeout = timeout
    conf.redis_socket_timeout = timeout
    conf.redis_socket_connect_timeout = timeout
    conf.redis_retry_on_timeout = False
    # The backend's pub/sub reconnect (batch results) retries under this policy; Celery's own is 20 tries.
    conf.result_backend_transport_options = {"retry_policy": {**_ONE_RETRY_ON_DROP, "timeout": timeout}}
    conf.task_publish_retry_policy = _ONE_RETRY_ON_DROP
