"""Admission: the queue's depth is read from the broker at most every max_age, and decides 503s before work is sent."""

from types import SimpleNamespace
from typing import cast

import pytest
import redis
from celery import Celery
from kombu.exceptions import ChannelError

from api.admission import Admission
from api.circuit import Circuit
from api.errors import QueueFull, QueueUnavailable

QUEUE = "iris"
MAX_LENGTH = 100


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeChannel:
    """Answer a passive queue_declare with ``depth`` messages, or raise ``error``."""

    def __init__(self, broker: "FakeBroker") -> None:
        self.broker = broker

    def queue_declare(self, queue: str, passive: bool = False) -> SimpleNamespace:
        assert queue == QUEUE and passive  # admission must never create the queue
        self.broker.asked += 1
        if self.broker.error is not None:
            raise self.broker.error
        return SimpleNamespace(queue=queue, message_count=self.broker.depth)


class FakeConnection:
    def __init__(self, broker: "FakeBroker") -> None:
        self.default_channel = FakeChannel(broker)
        self.transport = SimpleNamespace(driver_type=broker.driver_type)
        self.released = False

    def release(self) -> None:
        self.released = True


class FakeBroker:
    """Stands in for the Celery app: ``connection_for_read`` opens a fake connection and records it."""

    def __init__(self) -> None:
        self.driver_type = "redis"
        self.depth = 0
        self.error: Exception | None = None
        self.asked = 0
        self.connections: list[FakeConnection] = []

    def connection_for_read(self) -> FakeConnection:
        self.connections.append(FakeConnection(self))
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
    return Admission(cast(Celery, broker), QUEUE, MAX_LENGTH, circuit, max_age=0.25, clock=clock)


def test_a_reading_is_reused_for_max_age(admission: Admission, broker: FakeBroker, clock: FakeClock) -> None:
    broker.depth = 7
    assert admission.depth() == 7
    broker.depth = 8
    clock.now += 0.2
    assert admission.depth() == 7 and broker.asked == 1
    assert admission.last_depth == 7


def test_a_stale_reading_is_refreshed(admission: Admission, broker: FakeBroker, clock: FakeClock) -> None:
    broker.depth = 7
    admission.depth()
    broker.depth = 8
    clock.now += 0.25
    assert admission.depth() == 8 and broker.asked == 2


def test_fresh_always_asks_the_broker(admission: Admission, broker: FakeBroker) -> None:
    broker.depth = 3
    admission.depth()
    broker.depth = 4
    assert admission.depth(fresh=True) == 4
    assert admission.depth(fresh=True) == 4 and broker.asked == 3


def test_the_connection_is_kept_between_readings(admission: Admission, broker: FakeBroker) -> None:
    for _ in range(3):
        admission.depth(fresh=True)
    assert len(broker.connections) == 1 and not broker.connections[0].released


def test_admit_passes_below_the_max_length(admission: Admission, broker: FakeBroker) -> None:
    broker.depth = MAX_LENGTH - 1
    admission.admit()
    assert broker.asked == 1


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
    assert admission.last_depth == 9


def test_on_amqp_a_queue_no_worker_declared_yet_is_empty_and_the_closed_channel_dropped(
        admission: Admission, broker: FakeBroker) -> None:
    broker.driver_type = "amqp"
    broker.error = ChannelError("NOT_FOUND - no queue 'iris'")
    assert admission.depth() == 0
    assert broker.connections[0].released  # AMQP closed the channel that asked


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
