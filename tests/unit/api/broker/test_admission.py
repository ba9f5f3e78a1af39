"""Admission: the depth of both queues is read from the broker at most every max_age, this process's own admissions
count in between, and it decides 503s before work is sent."""

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import redis as kombu_redis

from api.broker.admission import Admission
from api.broker.circuit import Circuit
from api.errors import QueueFull, QueueUnavailable
from tests.unit.fake_clock import FakeClock

QUEUE, ROWS = "iris", "iris.rows"
MAX_LENGTH = 100


class FakeChannel:
    """Answer a passive queue_declare with the queue's depth, or raise ``error``."""

    def __init__(self, broker: "FakeBroker") -> None:
        self.broker = broker

    def queue_declare(self, queue: str, passive: bool = False) -> SimpleNamespace:
        assert queue in (QUEUE, ROWS) and passive  # admission must never create a queue
        self.broker.asked += 1
        if self.broker.error is not None:
            raise self.broker.error
        return SimpleNamespace(queue=queue, message_count=self.broker.depths[queue])


class FakeConnection:
    def __init__(self, broker: "FakeBroker", channel: Any) -> None:
        self.default_channel = channel
        self.transport = SimpleNamespace(driver_type=broker.driver_type)
        self.released = False

    def release(self) -> None:
        self.released = True


class FakeBroker:
    """Stands in for the Celery app: ``connection_for_read`` opens a fake connection and records it."""

    def __init__(self) -> None:
        self.driver_type = "redis"
        self.depths = {QUEUE: 0, ROWS: 0}
        self.error: Exception | None = None
        self.asked = 0
        self.connections: list[FakeConnection] = []
        self.channel: Any = None  # a channel to hand out instead of a FakeChannel

    @property
    def depth(self) -> int:
        return sum(self.depths.values())

    @depth.setter
    def depth(self, value: int) -> None:
        self.depths = {QUEUE: value, ROWS: 0}

    def connection_for_read(self) -> FakeConnection:
        self.connections.append(FakeConnection(self, self.channel or FakeChannel(self)))
        return self.connections[-1]


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def circuit() -> Circuit:
    return Circuit(open_seconds=60)  # stays open for the whole test once tripped


@pytest.fixture
def admission(broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> Admission:
    return Admission(cast(Celery, broker), (QUEUE, ROWS), MAX_LENGTH, circuit, max_age=0.25, clock=clock)


def test_a_reading_is_reused_for_max_age(admission: Admission, broker: FakeBroker, clock: FakeClock) -> None:
    broker.depth = 7
    assert admission.depth() == 7
    broker.depth = 8
    clock.now += 0.2
    assert admission.depth() == 7 and broker.asked == 2  # one passive declare per queue
    assert admission.depth() == 7 and broker.asked == 2  # the reading kept


def test_a_stale_reading_is_refreshed(admission: Admission, broker: FakeBroker, clock: FakeClock) -> None:
    broker.depth = 7
    admission.depth()
    broker.depth = 8
    clock.now += 0.25
    assert admission.depth() == 8 and broker.asked == 4


def test_fresh_always_asks_the_broker(admission: Admission, broker: FakeBroker) -> None:
    broker.depth = 3
    admission.depth()
    broker.depth = 4
    assert admission.depth(fresh=True) == 4
    assert admission.depth(fresh=True) == 4 and broker.asked == 6


def test_the_connection_is_kept_between_readings(admission: Admission, broker: FakeBroker) -> None:
    for _ in range(3):
        admission.depth(fresh=True)
    assert len(broker.connections) == 1 and not broker.connections[0].released


def test_admit_passes_below_the_max_length(admission: Admission, broker: FakeBroker) -> None:
    broker.depth = MAX_LENGTH - 1
    admission.admit()
    assert broker.asked == 2


def test_admit_refuses_with_queue_full_at_the_max_length(admission: Admission, broker: FakeBroker) -> None:
    broker.depth = MAX_LENGTH
    with pytest.raises(QueueFull) as caught:
        admission.admit()
    assert caught.value.status == 503 and str(MAX_LENGTH) in caught.value.message


def test_a_broker_error_is_queue_unavailable_and_trips_the_circuit(admission: Admission, broker: FakeBroker,
                                                                    circuit: Circuit) -> None:
    broker.error = redis.ConnectionError("Connection refused")
    with pytest.raises(QueueUnavailable):
        admission.admit()
    assert circuit.is_open()


def test_no_broker_call_while_the_circuit_is_open(admission: Admission, broker: FakeBroker,
                                                  circuit: Circuit) -> None:
    circuit.trip()
    with pytest.raises(QueueUnavailable):
        admission.admit()
    assert broker.asked == 0 and broker.connections == []


def test_a_failing_reading_drops_the_kept_connection(admission: Admission, broker: FakeBroker) -> None:
    admission.depth()
    broker.error = redis.ConnectionError("Connection reset by peer")
    with pytest.raises(redis.ConnectionError):
        admission.depth(fresh=True)
    assert broker.connections[0].released
    broker.error = None
    broker.depth = 5
    assert admission.depth(fresh=True) == 5
    assert len(broker.connections) == 2 and not broker.connections[1].released


def test_a_failing_reading_keeps_the_last_depth(admission: Admission, broker: FakeBroker) -> None:
    broker.depth = 9
    admission.depth()
    broker.error = redis.TimeoutError("Timeout reading from socket")
    with pytest.raises(redis.TimeoutError):
        admission.depth(fresh=True)
    assert admission.depth() == 9  # the reading kept, not asked again


def test_on_amqp_a_queue_no_worker_declared_yet_is_empty_and_the_closed_channel_dropped(
        admission: Admission, broker: FakeBroker) -> None:
    broker.driver_type = "amqp"
    broker.error = ChannelError("NOT_FOUND - no queue 'iris'")
    assert admission.depth() == 0
    assert broker.connections[0].released  # AMQP closed the channel that asked
    assert len(broker.connections) == 2 and broker.connections[1].released  # the second queue asked afresh


def test_on_redis_an_empty_queue_keeps_the_connection(admission: Admission, broker: FakeBroker) -> None:
    # Redis deletes an empty list, so kombu answers a passive declare of an idle queue with ChannelError;
    # reconnecting on each such reading cost 2 connections and about 7 ms a reading.
    broker.error = ChannelError("NOT_FOUND - no queue 'iris'")
    assert admission.depth() == 0 and admission.depth(fresh=True) == 0
    assert len(broker.connections) == 1 and not broker.connections[0].released


def test_close_releases_the_kept_connection_and_a_second_close_is_harmless(admission: Admission,
                                                                          broker: FakeBroker) -> None:
    admission.depth()
    admission.close()
    admission.close()
    assert broker.connections[0].released and len(broker.connections) == 1


def test_both_queues_together_are_bounded(admission: Admission, broker: FakeBroker) -> None:
    broker.depths = {QUEUE: 59, ROWS: 40}
    admission.admit()
    broker.depths = {QUEUE: 60, ROWS: 40}
    with pytest.raises(QueueFull):
        admission.admit()  # 99 read and the one admitted since: full, without asking again
    assert admission.depths(fresh=True) == {QUEUE: 60, ROWS: 40} and admission.depth() == MAX_LENGTH
    with pytest.raises(QueueFull):
        admission.admit()  # and the fresh reading alone says so


def test_a_burst_within_one_reading_is_refused_at_the_bound_without_asking_again(
        broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), 5, circuit, max_age=0.25, clock=clock)
    for _ in range(5):
        admission.admit()
    with pytest.raises(QueueFull) as caught:
        admission.admit()
    assert broker.asked == 2 and "5 tasks" in caught.value.message


def test_when_its_own_count_refuses_the_broker_is_asked_again_after_recheck(
        broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), 5, circuit, max_age=0.25, clock=clock, recheck=0.01)
    for _ in range(5):
        admission.admit()
    clock.now += 0.02  # the workers took the five meanwhile: the queues are empty again
    admission.admit()
    assert broker.asked == 4


def test_a_reading_replaces_the_count_of_what_was_sent_before_it(
        broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), 5, circuit, max_age=0.25, clock=clock)
    for _ in range(4):
        admission.admit()
    broker.depths = {QUEUE: 0, ROWS: 4}  # the four are queued, and now in the reading
    clock.now += 0.25
    admission.admit()  # 4 read + 0 counted: room for one
    with pytest.raises(QueueFull):
        admission.admit()


def test_a_counted_resend_takes_room_without_an_admission(
        broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), 2, circuit, max_age=0.25, clock=clock)
    admission.admit()
    admission.count()  # its row timed out and was sent again
    with pytest.raises(QueueFull):
        admission.admit()


class FakePipeline:
    """A redis-py pipeline that answers LLEN from ``lists`` and records each key and each round trip."""

    def __init__(self, lists: dict[str, int], log: list[list[str]]) -> None:
        self.lists, self.log = lists, log
        self.keys: list[str] = []

    def llen(self, key: str) -> "FakePipeline":
        self.keys.append(key)
        return self

    def execute_command(self, *args: str) -> "FakePipeline":
        assert args[:2] == ("MEMORY", "USAGE") and args[3:] == ("SAMPLES", "0"), args
        self.keys.append(f"memory:{args[2]}")
        return self

    def execute(self) -> list[int | None]:
        self.log.append(self.keys)
        # MEMORY USAGE answers nil for a key that does not exist; say 100 bytes a message for one that does.
        return [(100 * self.lists[key[7:]] if key[7:] in self.lists else None) if key.startswith("memory:")
                else self.lists.get(key, 0) for key in self.keys]

    def __enter__(self) -> "FakePipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, with its key naming and priority steps, over a client that never connects."""

    def __init__(self, lists: dict[str, int]) -> None:  # no super().__init__: nothing connects
        self.lists = lists
        self.round_trips: list[list[str]] = []
        self.declared: list[str] = []

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield SimpleNamespace(pipeline=lambda transaction=True: FakePipeline(self.lists, self.round_trips))

    def queue_declare(self, queue: Any = None, passive: bool = False, **kwargs: Any) -> Any:
        self.declared.append(queue)
        return SimpleNamespace(queue=queue, message_count=self.lists.get(queue, 0))


def test_on_redis_one_round_trip_reads_every_priority_list_of_both_queues(
        broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    # kombu keeps a queue's messages of priority p in its own list, named by kombu's _q_for_pri.
    sep = kombu_redis.Channel.sep
    broker.channel = channel = FakeRedisChannel({QUEUE: 3, f"{QUEUE}{sep}6": 2, ROWS: 4, f"{ROWS}{sep}9": 1})
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), MAX_LENGTH, circuit, clock=clock)
    assert admission.depths() == {QUEUE: 5, ROWS: 5}
    assert len(channel.round_trips) == 1 and channel.declared == []
    assert channel.round_trips[0] == [QUEUE, f"{QUEUE}{sep}3", f"{QUEUE}{sep}6", f"{QUEUE}{sep}9",
                                      ROWS, f"{ROWS}{sep}3", f"{ROWS}{sep}6", f"{ROWS}{sep}9"]


def test_without_fast_paths_redis_is_asked_through_queue_declare(
        broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    broker.channel = channel = FakeRedisChannel({QUEUE: 3, ROWS: 2})
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), MAX_LENGTH, circuit, clock=clock, fast=False)
    assert admission.depth() == 5
    assert channel.declared == [QUEUE, ROWS] and channel.round_trips == []


def test_a_reading_waited_for_is_not_asked_again_once_the_circuit_opened(admission: Admission, broker: FakeBroker,
                                                                         circuit: Circuit) -> None:
    # Threads waiting for a reading that failed: each one asking again would wait out the timeout in turn.
    circuit.trip()
    with pytest.raises(QueueUnavailable):
        admission.depth(fresh=True)
    assert broker.asked == 0


def test_on_redis_the_byte_bound_refuses_in_the_same_round_trip_as_the_lengths(
        broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    sep = kombu_redis.Channel.sep
    broker.channel = channel = FakeRedisChannel({QUEUE: 3, ROWS: 4, f"{ROWS}{sep}9": 1})
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), MAX_LENGTH, circuit, clock=clock, max_bytes=900)
    admission.admit()  # 8 messages of 100 bytes: 800 bytes, under the bound
    assert admission.last_bytes == 800 and len(channel.round_trips) == 1
    assert channel.round_trips[0][8:] == [f"memory:{key}" for key in channel.round_trips[0][:8]]
    channel.lists[QUEUE] += 1  # 900 bytes at the next reading
    clock.now += admission.max_age
    with pytest.raises(QueueFull, match=r"0\.0 MB of tasks"):
        admission.admit()
    assert len(channel.round_trips) == 2


def test_without_a_byte_bound_no_memory_is_asked(broker: FakeBroker, circuit: Circuit, clock: FakeClock) -> None:
    broker.channel = channel = FakeRedisChannel({QUEUE: 3})
    admission = Admission(cast(Celery, broker), (QUEUE, ROWS), MAX_LENGTH, circuit, clock=clock)
    admission.admit()
    assert not any(key.startswith("memory:") for key in channel.round_trips[0]) and admission.last_bytes == 0
