"""The classify/poll service: what each answer, failure and timeout of the queue becomes, with no network."""

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from amqp.exceptions import MessageNacked
from celery import states
from kombu.exceptions import OperationalError

from api import create_app
from api.batching.batcher import EdgeBatcher, PublishFailed, WorkerError
from api.errors import QueueFull, QueueUnavailable, TaskFailed, TimedOut
from shared import tasks
from shared.celery_app import create_celery
from shared.schemas import FEATURES
from shared.settings import Settings
from tests.helpers import SEED_EXAMPLE
from tests.unit.api.service_world import World, memory_settings

DOWN = "redis://127.0.0.1:1/0"
ROW = [7.7, 2.6, 6.9, 2.3]
ANSWER = {"label": "virginica", "class_index": 2}


@pytest.fixture
def no_celery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery reads these before the URLs it is given: left set, they would point the app at Redis.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)


@pytest.fixture
def world(no_celery_env: None) -> World:
    return World(memory_settings(), create_celery(memory_settings()))


@pytest.fixture
def hasty(no_celery_env: None) -> World:
    """A world whose sync requests give up after 10 ms (the service's own timeout)."""
    fast = memory_settings(sync_timeout_seconds=0.01)
    return World(fast, create_celery(fast))


@pytest.fixture
def request_context() -> Iterator[None]:
    """TimedOut builds its poll URL with url_for: it needs the API's routes and a request."""
    app = create_app(Settings(celery_broker_url=DOWN, celery_result_backend=DOWN))
    with app.test_request_context():
        yield


def test_a_sync_row_returns_its_task_id_and_result(world: World) -> None:
    world.batcher.answer = lambda pending: pending.resolve(result=ANSWER)
    task_id, result = world.service.classify(ROW)
    assert (task_id, result) == (world.batcher.submitted[0].task_id, ANSWER)
    assert world.batcher.submitted[0].row == ROW and world.replies.started == 1


def test_a_row_goes_through_the_real_batcher_and_back(world: World) -> None:
    batcher: EdgeBatcher

    def publish(rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        batcher.deliver(task_ids, [{"label": "setosa", "row": row} for row in rows])

    batcher = EdgeBatcher(publish, max_size=8, max_wait_ms=1, max_in_flight=1, reply_timeout=2.0)
    real = World(world.settings, world.celery, batcher)
    task_id, result = real.service.classify(ROW)
    assert result == {"label": "setosa", "row": ROW} and len(task_id) == 36


def test_a_refused_admission_submits_nothing(world: World) -> None:
    world.admission.refusal = QueueFull(10_000)
    with pytest.raises(QueueFull):
        world.service.classify(ROW)
    assert world.batcher.submitted == []


def test_a_failed_publish_is_queue_unavailable(world: World) -> None:
    world.batcher.answer = lambda pending: pending.resolve(error=PublishFailed("Connection refused"))
    with pytest.raises(QueueUnavailable):
        world.service.classify(ROW)


def test_a_row_whose_batch_the_broker_refused_is_queue_full_and_the_circuit_stays_closed(world: World) -> None:
    batcher: EdgeBatcher

    def publish(rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        raise QueueFull()  # the edge publisher's answer to a nack

    batcher = EdgeBatcher(publish, max_size=8, max_wait_ms=1, max_in_flight=1, reply_timeout=2.0)
    real = World(world.settings, world.celery, batcher)
    with pytest.raises(QueueFull) as raised:
        real.service.classify(ROW)
    assert raised.value.message == QueueFull.refused and not real.circuit.is_open()


def test_a_worker_error_is_task_failed_naming_the_task(world: World) -> None:
    world.batcher.answer = lambda pending: pending.resolve(error=WorkerError("ValueError", "bad row"))
    with pytest.raises(TaskFailed) as caught:
        world.service.classify(ROW)
    assert caught.value.data == {"task_id": world.batcher.submitted[0].task_id}
    assert "bad row" not in caught.value.message  # the worker's message stays in the worker's log


@pytest.mark.usefixtures("request_context")
def test_a_timeout_is_timed_out_and_the_id_is_remembered_for_row_result_expires(
        hasty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(hasty, monkeypatch, store=False)
    with pytest.raises(TimedOut) as caught:
        hasty.service.classify(ROW)
    pending = hasty.batcher.submitted[0]
    assert caught.value.task_id == pending.task_id
    assert caught.value.data["status_url"].endswith(pending.task_id)
    assert hasty.issued(pending.task_id) == (b"1", hasty.settings.row_result_expires_seconds)
    assert hasty.batcher.forgotten == [pending]  # a late answer no longer reaches this request


@pytest.mark.usefixtures("request_context")
def test_a_timed_out_row_is_marked_then_sent_again_as_an_acknowledged_task_under_its_own_id(
        hasty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(hasty, monkeypatch, store=False)
    with pytest.raises(TimedOut):
        hasty.service.classify(ROW)
    task_id = hasty.batcher.submitted[0].task_id
    mark = ("set", f"{hasty.settings.key_prefix}task:{task_id}")
    payload = dict(zip(FEATURES, ROW, strict=True))
    # Marked first, so a worker that stores the row from then on keeps it for the poll URL.
    assert hasty.events == [mark, ("send", tasks.CLASSIFY, [payload], task_id, hasty.settings.iris_queue)]
    # Admitted once, with the request; the resend counts towards QUEUE_MAX_LENGTH all the same.
    assert hasty.admission.admitted == 1 and hasty.admission.counted == 1


@pytest.mark.usefixtures("request_context")
def test_a_timed_out_row_that_cannot_be_sent_again_is_queue_unavailable(
        hasty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(hasty, monkeypatch, error=OSError("Connection refused"))
    with pytest.raises(QueueUnavailable):
        hasty.service.classify(ROW)
    assert hasty.circuit.is_open()


def test_a_timeout_whose_result_is_already_stored_returns_it_and_sends_nothing(
        hasty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(hasty, monkeypatch)
    # The worker answered, but the reply was missed (the listener was reconnecting): the backend has it.
    hasty.batcher.answer = lambda pending: hasty.celery.backend.store_result(pending.task_id, ANSWER, states.SUCCESS)
    task_id, result = hasty.service.classify(ROW)
    assert (task_id, result) == (hasty.batcher.submitted[0].task_id, ANSWER)
    assert not [event for event in hasty.events if event[0] == "send"]


def test_a_timeout_with_redis_down_is_queue_unavailable(hasty: World) -> None:
    hasty.results.down = True
    with pytest.raises(QueueUnavailable):
        hasty.service.classify(ROW)
    assert hasty.circuit.is_open()


def record_sends(world: World, monkeypatch: pytest.MonkeyPatch, error: Exception | None = None,
                 store: bool = True) -> None:
    """Log each send_task to the world's events (or raise ``error``); with ``store``, store a result as a worker
    would."""

    def send_task(name: str, args: list[Any], task_id: str, queue: str, headers: Any = None) -> None:
        world.events.append(("send", name, args, task_id, queue))
        if error is not None:
            raise error
        if store:
            world.celery.backend.store_result(task_id, [ANSWER], states.SUCCESS)

    monkeypatch.setattr(world.celery, "send_task", send_task)


def test_classify_async_remembers_the_id_before_sending(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(world, monkeypatch)
    task_id = world.service.classify_async(SEED_EXAMPLE)
    key = f"{world.settings.key_prefix}task:{task_id}"
    assert world.events == [("set", key), ("send", tasks.CLASSIFY, [SEED_EXAMPLE], task_id, "iris")]
    # Marked as queued by POST /v1/classify/async: the one kind of task DELETE may cancel.
    assert world.issued(task_id) == (b"async", world.settings.result_expires_seconds)


def test_classify_async_maps_a_send_failure_to_queue_unavailable(world: World,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(world, monkeypatch, OperationalError("Error 111 connecting to 127.0.0.1:6379"))
    with pytest.raises(QueueUnavailable):
        world.service.classify_async(SEED_EXAMPLE)
    assert world.circuit.is_open()


def nacked_through_kombu() -> Exception:
    """What Celery's retrying publish raises when RabbitMQ nacks every try: kombu's OperationalError from it."""
    error = OperationalError("")
    error.__cause__ = MessageNacked()
    return error


def test_classify_async_maps_a_refused_send_to_queue_full_and_serves_the_next(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(world, monkeypatch, nacked_through_kombu())
    with pytest.raises(QueueFull):
        world.service.classify_async(SEED_EXAMPLE)
    assert not world.circuit.is_open()
    record_sends(world, monkeypatch)
    assert world.service.classify_async(SEED_EXAMPLE)  # the broker took it: served at once


@pytest.mark.usefixtures("request_context")
def test_a_timed_out_row_whose_resend_the_broker_refuses_is_queue_full(
        hasty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(hasty, monkeypatch, error=nacked_through_kombu())
    with pytest.raises(QueueFull):
        hasty.service.classify(ROW)
    assert not hasty.circuit.is_open()


def test_classify_async_sends_nothing_when_the_id_cannot_be_remembered(world: World,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(world, monkeypatch)
    world.results.down = True
    with pytest.raises(QueueUnavailable):
        world.service.classify_async(SEED_EXAMPLE)
    assert world.events == []


def test_classify_batch_sends_the_rows_as_one_table_and_returns_its_reply(world: World) -> None:
    world.tables.answer = lambda task_id: world.service.deliver([task_id], [[ANSWER, ANSWER]], None)
    task_id, answers = world.service.classify_batch([ROW, ROW])
    assert answers == [ANSWER, ANSWER] and world.tables.sent == [([ROW, ROW], task_id, None)]
    assert world.replies.started == 1


def test_a_reply_for_no_batch_request_goes_to_the_edge_batcher(world: World) -> None:
    world.service.deliver(["row-1"], [ANSWER], None)
    assert world.batcher.delivered == [(["row-1"], [ANSWER], None)]


def test_a_failed_batch_is_task_failed(world: World) -> None:
    world.tables.answer = lambda task_id: world.service.deliver([task_id], None, WorkerError("ValueError", "bad"))
    with pytest.raises(TaskFailed):
        world.service.classify_batch([ROW])


def test_a_batch_that_cannot_be_sent_is_queue_unavailable(world: World) -> None:
    world.tables.fail = redis.ConnectionError("Connection refused")
    with pytest.raises(QueueUnavailable):
        world.service.classify_batch([ROW])


def test_a_batch_the_broker_refuses_is_queue_full_and_waits_for_no_reply(world: World) -> None:
    world.tables.fail = QueueFull()  # the edge publisher's answer to a nack
    with pytest.raises(QueueFull):
        world.service.classify_batch([ROW])
    assert world.service._tables == {} and not world.circuit.is_open()


def test_a_batch_the_broker_refuses_bare_is_queue_full_through_the_guard(world: World) -> None:
    world.tables.fail = MessageNacked()  # had the publisher let a nack through, the guard maps it
    with pytest.raises(QueueFull):
        world.service.classify_batch([ROW])
    assert world.service._tables == {} and not world.circuit.is_open()


@pytest.mark.usefixtures("request_context")
def test_a_timed_out_batch_is_marked_for_result_expires_then_sent_again_as_the_public_task(
        hasty: World, monkeypatch: pytest.MonkeyPatch) -> None:
    record_sends(hasty, monkeypatch, store=False)
    with pytest.raises(TimedOut) as caught:
        hasty.service.classify_batch([ROW])
    task_id = caught.value.task_id
    assert hasty.issued(task_id) == (b"1", hasty.settings.result_expires_seconds)
    payload = dict(zip(FEATURES, ROW, strict=True))
    assert hasty.events[-1] == ("send", tasks.CLASSIFY_BATCH, [[payload]], task_id, hasty.settings.iris_queue)
    assert hasty.admission.admitted == 1 and hasty.admission.counted == 1
    hasty.service.deliver([task_id], [[ANSWER]], None)  # a late reply: no batch request waits for it any more
    assert hasty.batcher.delivered == [([task_id], [[ANSWER]], None)]  # which the batcher ignores


def test_status_of_an_id_never_issued_is_none(world: World) -> None:
    assert world.service.status("0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab") is None


def test_status_of_an_issued_id_still_queued_is_pending(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world.celery, "send_task", lambda *args, **kwargs: None)
    task_id = world.service.classify_async(SEED_EXAMPLE)
    assert world.service.status(task_id) == {"task_id": task_id, "status": states.PENDING, "result": None,
                                             "error": None}


def test_status_of_a_success_carries_its_result(world: World) -> None:
    world.celery.backend.store_result("t-ok", ANSWER, states.SUCCESS)
    assert world.service.status("t-ok") == {"task_id": "t-ok", "status": states.SUCCESS, "result": ANSWER,
                                            "error": None}


def test_status_of_a_failure_carries_its_error(world: World) -> None:
    world.celery.backend.mark_as_failure("t-bad", ValueError("bad row"))
    body = world.service.status("t-bad")
    assert body is not None and body["status"] == states.FAILURE and body["result"] is None
    assert body["error"] == {"raised": "ValueError", "message": "bad row"}


def test_status_of_a_failure_never_serves_a_password_its_error_names(world: World) -> None:
    world.celery.backend.mark_as_failure("t-bad", ConnectionError("Cannot connect to redis://:s3cr3t@cache:6379/0"))
    body = world.service.status("t-bad")
    assert body is not None and body["error"]["message"] == "Cannot connect to redis://:***@cache:6379/0"


def test_status_with_the_backend_down_is_queue_unavailable(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(task_id: str) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(world.celery.backend, "get_task_meta", refuse)
    with pytest.raises(QueueUnavailable):
        world.service.status("t-any")
    assert world.circuit.is_open()


def test_status_with_redis_down_is_queue_unavailable(world: World) -> None:
    world.results.down = True
    with pytest.raises(QueueUnavailable):
        world.service.status("0f9c2b7e-1d2a-4c3b-9e8f-0123456789ab")
    assert world.circuit.is_open()


def test_status_while_the_circuit_is_open_reads_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def unexpected(task_id: str) -> None:
        raise AssertionError("read the backend while the circuit was open")

    monkeypatch.setattr(world.celery.backend, "get_task_meta", unexpected)
    world.circuit.trip()
    with pytest.raises(QueueUnavailable):
        world.service.status("t-any")
