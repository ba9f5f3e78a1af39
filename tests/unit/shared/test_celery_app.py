"""The Celery app factory: JSON only, late acks that survive a lost worker, one queue."""

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


def test_iris_tasks_route_to_the_configured_queue() -> None:
    conf = create_celery(Settings(iris_queue="elsewhere")).conf
    assert conf.task_default_queue == "elsewhere"
    assert conf.task_routes["iris.*"]["queue"] == "elsewhere"
