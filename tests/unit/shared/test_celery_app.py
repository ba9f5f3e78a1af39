"""The Celery app factory: JSON only, late acks that survive a lost worker, one queue."""

import ssl

import pytest

from shared.celery_app import create_celery
from shared.settings import Settings


def test_pickle_is_never_accepted() -> None:
    conf = create_celery(Settings()).conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == "json" and conf.result_serializer == "json"


def test_late_acks_are_paired_with_reject_on_worker_lost() -> None:
    conf = create_celery(Settings()).conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True


def test_visibility_timeout_is_set_in_broker_transport_options() -> None:
    conf = create_celery(Settings(visibility_timeout_seconds=42)).conf
    assert conf.broker_transport_options["visibility_timeout"] == 42


def test_redis_looks_for_a_dead_workers_messages_every_5_seconds() -> None:
    options = create_celery(Settings()).conf.broker_transport_options
    # kombu sweeps every interval x throttle seconds; its defaults (10 x 10) delayed redelivery by up to 100 s.
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == 5
    # A worker killed mid-sweep holds the sweep lock until it expires; kombu's default is 300 s.
    assert options["unacked_mutex_expire"] <= Settings().visibility_timeout_seconds


def test_default_visibility_timeout_outlasts_two_time_limits_and_redelivers_within_3_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VISIBILITY_TIMEOUT_SECONDS", raising=False)
    settings = Settings()
    conf = create_celery(settings).conf
    sweep = conf.broker_transport_options["unacked_restore_interval"]
    assert settings.visibility_timeout_seconds >= 2 * conf.task_time_limit
    # Leave a replacement worker 30 s to start and drain the queue.
    assert settings.visibility_timeout_seconds + sweep <= 180 - 30


def test_iris_tasks_route_to_the_configured_queue() -> None:
    conf = create_celery(Settings(iris_queue="elsewhere")).conf
    assert conf.task_default_queue == "elsewhere"
    assert conf.task_routes["iris.*"]["queue"] == "elsewhere"


def test_rediss_verifies_the_server_unless_the_url_says_otherwise() -> None:
    url = "rediss://127.0.0.1:6380/0"
    app = create_celery(Settings(celery_broker_url=url, celery_result_backend=url))
    assert app.conf.broker_use_ssl == app.conf.redis_backend_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # The URL's own ssl_* parameters win: kombu parses them into the connection's ssl options.
    query = "?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem"
    conn = create_celery(Settings(celery_broker_url=url + query)).connection_for_write()
    assert conn.ssl == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/ca.pem"}
    assert not create_celery(Settings()).conf.broker_use_ssl  # plain redis:// stays plain


def test_rabbitmq_gets_a_quorum_task_queue_and_publisher_confirms_and_no_redis_options() -> None:
    app = create_celery(Settings(celery_broker_url="amqp://guest:guest@rabbit:5672//", iris_queue="jobs"))
    (queue,) = app.conf.task_queues
    assert (queue.name, queue.routing_key, queue.exchange.name) == ("jobs", "jobs", "jobs")
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    assert app.amqp.queues["other"].queue_arguments == {"x-queue-type": "quorum"}  # a -Q name beside it
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.broker_transport is None  # kombu's own AMQP transport, not the Redis subclasses


def test_redis_keeps_celerys_default_queues() -> None:
    assert create_celery(Settings(celery_broker_url="redis://r:6379/0")).conf.task_queues is None

