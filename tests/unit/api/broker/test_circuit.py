"""The one guard for "Redis is down": 503 in the envelope's terms, the circuit tripped, one log line per outage."""

import logging

import pytest
import redis
from kombu.exceptions import OperationalError

from api.broker.circuit import Circuit
from api.errors import QueueUnavailable
from tests.unit.fake_clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def circuit(clock: FakeClock) -> Circuit:
    return Circuit(open_seconds=1.0, clock=clock)


@pytest.mark.parametrize("failure", [
    redis.ConnectionError("Connection refused"),
    redis.TimeoutError("Timeout reading from socket"),
    redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
    redis.AuthenticationError("invalid password"),
    OperationalError("Error 111 connecting to redis:6379"),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_a_redis_failure_becomes_queue_unavailable_and_trips_the_circuit(circuit: Circuit,
                                                                         failure: Exception) -> None:
    with pytest.raises(QueueUnavailable) as raised, circuit.guard("reading"):
        raise failure
    assert raised.value.__suppress_context__  # the envelope names the outage, never the client's internals
    assert circuit.is_open()


def test_the_circuit_closes_after_open_seconds(circuit: Circuit, clock: FakeClock) -> None:
    with pytest.raises(QueueUnavailable), circuit.guard("reading"):
        raise redis.ConnectionError("down")
    clock.now += 1.01
    assert not circuit.is_open()


def test_the_guard_answers_with_its_own_message(circuit: Circuit) -> None:
    with pytest.raises(QueueUnavailable, match="Redis does not answer"), \
            circuit.guard("checking readiness", "Redis does not answer"):
        raise redis.ConnectionError("down")


def test_any_other_error_passes_through_and_leaves_the_circuit_closed(circuit: Circuit) -> None:
    with pytest.raises(KeyError), circuit.guard("reading"):
        raise KeyError("a bug, not an outage")
    assert not circuit.is_open()


def test_an_outage_is_logged_once_and_the_next_one_again(circuit: Circuit, caplog: pytest.LogCaptureFixture) -> None:
    enqueue, poll = circuit.guard("enqueuing"), circuit.guard("polling")
    with caplog.at_level(logging.WARNING, logger="api.broker.circuit"):
        for guard in (enqueue, poll, enqueue):
            with pytest.raises(QueueUnavailable), guard:
                raise redis.ConnectionError("Connection refused")
        assert len(caplog.records) == 1 and "enqueuing" in caplog.records[0].getMessage()
        with poll:
            pass  # Redis answered: the outage is over
        with pytest.raises(QueueUnavailable), poll:
            raise redis.TimeoutError("Timeout")
    assert [r.getMessage() for r in caplog.records][1].startswith("Redis is down (polling)")


def test_the_log_line_hides_a_password_the_error_quotes(circuit: Circuit, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.broker.circuit"), pytest.raises(QueueUnavailable), \
            circuit.guard("enqueuing"):
        raise OperationalError("cannot connect to redis://:s3cr3t-pw@redis:6379/0")
    assert "s3cr3t-pw" not in caplog.text and "redis://:***@redis:6379/0" in caplog.text


def test_refusing_while_open_does_not_keep_the_circuit_open(circuit: Circuit, clock: FakeClock) -> None:
    circuit.trip()
    clock.now += 0.9
    with pytest.raises(QueueUnavailable), circuit.guard("enqueuing"):
        raise QueueUnavailable()  # a caller refusing at once because the circuit is open: no new failure
    clock.now += 0.2
    assert not circuit.is_open()  # closed one second after the real failure, whatever was refused meanwhile
