"""The API's Redis waits are bounded: one timeout per call, no retried timeouts, a circuit after a failure."""


import pytest
import redis

from api.broker.circuit import Circuit
from api.broker.timeouts import bound_celery, redis_client
from shared.celery_app import create_celery
from shared.settings import Settings

DOWN = "redis://127.0.0.1:1/0"


def test_the_circuit_opens_on_a_failure_and_closes_after_its_window() -> None:
    now = [100.0]
    circuit = Circuit(open_seconds=0.2, clock=lambda: now[0])
    assert not circuit.is_open()
    circuit.trip()
    now[0] += 0.19
    assert circuit.is_open()
    now[0] += 0.02
    assert not circuit.is_open()


def test_a_zero_window_never_opens() -> None:
    circuit = Circuit(open_seconds=0)
    circuit.trip()
    assert not circuit.is_open()


def test_the_results_client_times_out_once_and_retries_only_a_dropped_connection() -> None:
    client = redis_client(DOWN, 0.7)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.7
    retry = kwargs["retry"]
    assert retry.get_retries() == 1
    assert redis.ConnectionError in retry._supported_errors and redis.TimeoutError not in retry._supported_errors


def test_the_results_client_waits_for_a_free_connection_instead_of_failing_at_once() -> None:
    # More concurrent requests than connections is a busy process, not a Redis outage: no 503, no tripped circuit
    # (tests/integration/api/test_bounds.py sends 200 at once).
    pool = redis_client(DOWN, 0.7).connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.timeout == 0.7 and pool.max_connections == 100


def test_the_api_celery_client_never_retries_a_timeout_and_caps_every_wait() -> None:
    celery = create_celery(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN))
    bound_celery(celery, 0.8)
    conf = celery.conf
    transport = conf.broker_transport_options
    assert transport["socket_timeout"] == transport["socket_connect_timeout"] == 0.8
    assert transport["retry_on_timeout"] is False and transport["max_retries"] == 0
    assert conf.redis_socket_timeout == conf.redis_socket_connect_timeout == 0.8
    assert conf.redis_retry_on_timeout is False
    assert conf.task_publish_retry_policy["max_retries"] == 1
    assert conf.result_backend_transport_options["retry_policy"]["max_retries"] == 1
    assert transport["visibility_timeout"] == Settings().visibility_timeout_seconds  # the shared options stay


def test_the_api_timeout_setting_is_capped_so_three_waits_stay_under_5_seconds() -> None:
    with pytest.raises(ValueError, match="api_redis_timeout_seconds"):
        Settings(api_redis_timeout_seconds=2)
