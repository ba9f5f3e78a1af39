"""The edge batcher: batches by size, by wait and by free in-flight slots, and routes each answer to its row."""

import logging
import threading
import time

import pytest

from api.batching.batcher import EdgeBatcher, Pending, PublishFailed, WorkerError
from api.errors import QueueFull
from tests.unit.api.batching.queue_rows import queue_row
from tests.unit.fake_clock import FakeClock

# A wait no test may sit out: were the fake clock ignored, flush_once would block this long on a slot.
LONG_WAIT_MS = 60_000.0


class FakePublisher:
    """Record each batch it is handed; raise ``fail`` instead when set."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[list[float]], list[str], list[str | None]]] = []
        self.fail: Exception | None = None
        self.published = threading.Event()

    def __call__(self, rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        if self.fail is not None:
            raise self.fail
        self.batches.append((rows, task_ids, request_ids))
        self.published.set()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


def make(publisher: FakePublisher, clock: FakeClock, max_size: int = 64, max_wait_ms: float = LONG_WAIT_MS,
         max_in_flight: int = 1, reply_timeout: float = 3600.0) -> EdgeBatcher:
    # reply_timeout outlasts LONG_WAIT_MS by default: moving the clock past a wait must not expire slots too.
    return EdgeBatcher(publisher, max_size=max_size, max_wait_ms=max_wait_ms, max_in_flight=max_in_flight,
                       reply_timeout=reply_timeout, clock=clock)


def slots_held(batcher: EdgeBatcher) -> set[str]:
    """Return the first task id of each batch holding an in-flight slot (the batcher exposes no reader)."""
    return set(batcher._in_flight)


def past_wait(clock: FakeClock, oldest: Pending) -> None:
    """Move the clock past ``oldest``'s wait, so flush_once's wait for a slot is over before it starts."""
    clock.now = oldest.enqueued + LONG_WAIT_MS / 1000.0 + 0.001


def test_more_rows_than_max_size_split_into_batches_of_max_size(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_size=2, max_in_flight=10)
    rows = [[float(i)] * 4 for i in range(5)]
    pendings = [queue_row(batcher, row, f"req-{i}") for i, row in enumerate(rows)]
    for _ in range(3):
        batcher.flush_once()
    assert [batch[0] for batch in publisher.batches] == [rows[0:2], rows[2:4], rows[4:5]]
    assert [tid for batch in publisher.batches for tid in batch[1]] == [p.task_id for p in pendings]
    assert [rid for batch in publisher.batches for rid in batch[2]] == [f"req-{i}" for i in range(5)]


def test_a_batch_takes_every_row_waiting_up_to_max_size(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_size=8)
    for i in range(3):
        queue_row(batcher, [float(i)])
    assert len(batcher.flush_once()) == 3
    assert len(publisher.batches) == 1


def test_with_every_slot_taken_a_batch_goes_once_its_oldest_row_waited_max_wait(
        publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_in_flight=1)
    first = queue_row(batcher, [1.0])
    batcher.flush_once()
    assert slots_held(batcher) == {first.task_id}
    second = queue_row(batcher, [2.0])
    past_wait(clock, second)
    started = time.monotonic()
    batcher.flush_once()
    # Well under LONG_WAIT_MS: the wait was measured on the fake clock, not sat out.
    assert time.monotonic() - started < 5
    assert [batch[1] for batch in publisher.batches] == [[first.task_id], [second.task_id]]


def test_a_batch_sent_without_a_slot_does_not_take_one(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_in_flight=1)
    first = queue_row(batcher, [1.0])
    batcher.flush_once()
    second = queue_row(batcher, [2.0])
    past_wait(clock, second)
    batcher.flush_once()
    assert slots_held(batcher) == {first.task_id}
    batcher.deliver([second.task_id], [{"label": "b"}])  # its answer frees nothing: it held nothing
    assert slots_held(batcher) == {first.task_id}


def test_delivering_a_batch_frees_its_slot_for_the_next_batch(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_in_flight=1)
    first = queue_row(batcher, [1.0])
    batcher.flush_once()
    batcher.deliver([first.task_id], [{"label": "a"}])
    assert slots_held(batcher) == set()
    second = queue_row(batcher, [2.0])
    past_wait(clock, second)  # a slot acquire that cannot block: it must find the freed slot at once
    batcher.flush_once()
    assert slots_held(batcher) == {second.task_id}


def test_a_batch_whose_answer_never_came_frees_its_slot_after_reply_timeout(
        publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_wait_ms=100, max_in_flight=1, reply_timeout=2.0)
    lost = queue_row(batcher, [1.0])
    batcher.flush_once()
    clock.now += 2.5
    later = queue_row(batcher, [2.0])
    clock.now += 0.2  # past later's wait: the acquire cannot block
    batcher.flush_once()
    assert slots_held(batcher) == {later.task_id}
    assert not lost.wait(0)  # its request still waits for its own timeout or the backend


def test_a_slot_is_not_expired_before_reply_timeout(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_wait_ms=100, max_in_flight=1, reply_timeout=2.0)
    slow = queue_row(batcher, [1.0])
    batcher.flush_once()
    clock.now += 1.5
    queue_row(batcher, [2.0])
    clock.now += 0.2
    batcher.flush_once()
    assert slots_held(batcher) == {slow.task_id}


def test_a_failed_publish_fails_all_its_rows_at_once_and_frees_the_slot(
        publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_in_flight=1)
    publisher.fail = ConnectionError("Redis refused")
    pendings = [queue_row(batcher, [float(i)]) for i in range(3)]
    batcher.flush_once()
    for pending in pendings:
        assert pending.wait(0)
        assert isinstance(pending.error, PublishFailed) and "Redis refused" in str(pending.error)
    assert slots_held(batcher) == set()
    publisher.fail = None
    retry = queue_row(batcher, [9.0])
    past_wait(clock, retry)
    batcher.flush_once()
    assert slots_held(batcher) == {retry.task_id}


def test_a_batch_the_broker_refused_fails_its_rows_as_refused_unlogged_and_frees_the_slot(
        publisher: FakePublisher, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    batcher = make(publisher, clock, max_in_flight=1)
    publisher.fail = QueueFull()  # what the publisher raises on a nack (it logs the refusal, once a second)
    pendings = [queue_row(batcher, [float(i)]) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="api.batching.batcher"):
        batcher.flush_once()
    for pending in pendings:
        assert pending.wait(0)
        assert isinstance(pending.error, PublishFailed) and pending.error.refused
    assert slots_held(batcher) == set() and caplog.records == []


def test_a_failed_publish_is_not_a_refusal(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock)
    publisher.fail = ConnectionError("Connection refused")
    pending = queue_row(batcher, [1.0])
    batcher.flush_once()
    assert isinstance(pending.error, PublishFailed) and not pending.error.refused


def test_a_failed_publish_leaves_no_row_for_a_late_answer(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock)
    publisher.fail = ConnectionError("dropped")
    pending = queue_row(batcher, [1.0])
    batcher.flush_once()
    batcher.deliver([pending.task_id], [{"label": "late"}])
    assert isinstance(pending.error, PublishFailed) and pending.result is None


def test_a_batch_refused_after_publish_returned_fails_its_rows_and_frees_the_slot(
        publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_in_flight=1)
    pendings = [queue_row(batcher, [float(i)]) for i in range(2)]
    batcher.flush_once()
    other = queue_row(batcher, [9.0])
    batcher.fail([p.task_id for p in pendings], ConnectionError("OOM command not allowed"))
    for pending in pendings:
        assert pending.wait(0)
        assert isinstance(pending.error, PublishFailed) and "OOM" in str(pending.error)
    assert slots_held(batcher) == set()
    assert not other.wait(0)  # a row of no failed batch still waits for its own
    batcher.deliver([pendings[0].task_id], [{"label": "late"}])  # nothing left for a late answer
    assert pendings[0].result is None


def test_deliver_resolves_each_row_with_its_own_result_in_order(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock)
    pendings = [queue_row(batcher, [float(i)]) for i in range(3)]
    batcher.flush_once()
    results = [{"label": f"class-{i}"} for i in range(3)]
    batcher.deliver([p.task_id for p in pendings], results)
    assert all(p.wait(0) for p in pendings)
    assert [p.result for p in pendings] == results and all(p.error is None for p in pendings)


def test_deliver_routes_a_task_error_to_every_row(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock)
    pendings = [queue_row(batcher, [float(i)]) for i in range(2)]
    batcher.flush_once()
    error = WorkerError("ValueError", "bad row")
    batcher.deliver([p.task_id for p in pendings], None, error)
    assert all(p.wait(0) and p.error is error and p.result is None for p in pendings)
    assert error.raised == "ValueError" and str(error) == "ValueError: bad row"


def test_forget_stops_a_late_answer_reaching_the_request(publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock)
    pending = queue_row(batcher, [1.0])
    batcher.flush_once()
    batcher.forget(pending)
    batcher.deliver([pending.task_id], [{"label": "late"}])
    assert not pending.wait(0) and pending.result is None
    assert slots_held(batcher) == set()  # the answer still frees the batch's slot


def test_resolve_keeps_the_first_answer() -> None:
    pending = Pending([1.0], "req", enqueued=0.0)
    pending.resolve(result={"label": "first"})
    pending.resolve(error=PublishFailed("second"))
    assert pending.wait(0)
    assert pending.result == {"label": "first"} and pending.error is None


def test_wait_returns_false_when_no_answer_came_in_time() -> None:
    pending = Pending([1.0], None, enqueued=0.0)
    assert pending.wait(0.01) is False


def test_every_row_gets_its_own_task_id() -> None:
    ids = {Pending([1.0], None, enqueued=0.0).task_id for _ in range(100)}
    assert len(ids) == 100


def test_a_row_that_finds_a_slot_free_and_nothing_waiting_is_published_by_its_own_thread(
        publisher: FakePublisher) -> None:
    batcher = EdgeBatcher(publisher, max_size=8, max_wait_ms=LONG_WAIT_MS, max_in_flight=1, reply_timeout=2.0)
    pending = batcher.submit([5.1, 3.5, 1.4, 0.2], "req-1")
    # Already sent when submit returns: no hand-off to another thread, and no wait, however long max_wait is.
    assert publisher.batches == [([[5.1, 3.5, 1.4, 0.2]], [pending.task_id], ["req-1"])]
    assert any(thread.name == "iris-batch-flusher" for thread in threading.enumerate())


def test_rows_that_wait_for_a_slot_are_sent_by_the_answer_that_frees_it_before_it_resolves_its_own(
        publisher: FakePublisher, clock: FakeClock) -> None:
    answered_when_sent: list[bool] = []
    first: list[Pending] = []

    def publish(rows: list[list[float]], task_ids: list[str], request_ids: list[str | None]) -> None:
        answered_when_sent.append(bool(first) and first[0].result is not None)
        publisher(rows, task_ids, request_ids)

    batcher = EdgeBatcher(publish, max_size=64, max_wait_ms=LONG_WAIT_MS, max_in_flight=1, reply_timeout=3600.0,
                          clock=clock)
    first.append(batcher.submit([1.0], "req-1"))
    waiting = [batcher.submit([float(i)], f"req-{i}") for i in (2, 3)]  # every slot is taken: they wait
    assert [batch[1] for batch in publisher.batches] == [[first[0].task_id]]
    batcher.deliver([first[0].task_id], [{"label": "a"}])
    assert [batch[1] for batch in publisher.batches] == [[first[0].task_id], [p.task_id for p in waiting]]
    assert answered_when_sent == [False, False]  # the waiting rows went out before the answer was handed over
    assert first[0].wait(0) and first[0].result == {"label": "a"}
    assert slots_held(batcher) == {waiting[0].task_id}


def test_with_no_wait_allowed_a_row_that_finds_every_slot_taken_goes_at_once_without_one(
        publisher: FakePublisher, clock: FakeClock) -> None:
    batcher = make(publisher, clock, max_wait_ms=0, max_in_flight=1)
    first = batcher.submit([1.0])
    second = batcher.submit([2.0])
    assert [batch[1] for batch in publisher.batches] == [[first.task_id], [second.task_id]]
    assert slots_held(batcher) == {first.task_id}


def test_the_flusher_sends_a_row_that_waited_max_wait_though_nobody_woke_it(publisher: FakePublisher) -> None:
    batcher = EdgeBatcher(publisher, max_size=8, max_wait_ms=20, max_in_flight=1, reply_timeout=3600.0)
    first = batcher.submit([1.0])  # holds the only slot, and no answer will come
    second = batcher.submit([2.0])
    deadline = time.monotonic() + 10  # generous: bounds a failure; the flusher looks every 20 ms
    while len(publisher.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [batch[1] for batch in publisher.batches] == [[first.task_id], [second.task_id]]
