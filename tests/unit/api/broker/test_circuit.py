"""The one guard for "Redis is down": 503 in the envelope's terms, the circuit tripped, one log line per outage;
and a publish the broker refused (a nack under publisher confirms): QueueFull, the circuit closed."""

import logging
from collections.abc import Callable

import pytest
import redis
from amqp.exceptions import MessageNacked
from kombu import Connection
from kombu.exceptions import OperationalError

from api.broker.circuit import Circuit, refused
from api.errors import QueueFull, QueueUnavailable
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


class Revivable:
    """What kombu's ``ensure`` revives after reconnecting (a producer, in Celery's publish)."""

    def revive(self, channel: object) -> None:
        pass


def nacked() -> None:
    raise MessageNacked()  # what py-amqp raises when RabbitMQ answers a confirmed publish with basic.nack


def through_kombus_retry(max_retries: int) -> Exception:
    """Return what Celery's retrying publish raises (kombu's ``ensure``, as Celery calls it) when every publish is
    nacked: with ``max_retries`` above 0 it reconnects to a closed port, as if the broker went down in between."""
    with Connection("amqp://guest:guest@127.0.0.1:1//", connect_timeout=1) as conn:
        publish = conn.ensure(Revivable(), nacked, max_retries=max_retries, interval_start=0, interval_step=0,
                              interval_max=0)
        with pytest.raises(OperationalError) as raised:
            publish()
    return raised.value


def test_a_nack_is_a_refusal_bare_or_as_kombus_retrying_publish_raises_it() -> None:
    wrapped = through_kombus_retry(max_retries=0)
    assert isinstance(wrapped.__cause__, MessageNacked)  # the chain this module reads, as kombu 5.7 builds it
    assert refused(MessageNacked()) and refused(wrapped)


@pytest.mark.parametrize("failure", [
    OperationalError("[Errno 111] Connection refused"),
    ConnectionRefusedError(111, "Connection refused"),
    redis.ConnectionError("Connection refused"),
    OperationalError("Basic.publish: (404) NOT_FOUND"),
])
def test_an_outage_is_not_a_refusal(failure: Exception) -> None:
    assert not refused(failure)


def test_an_outage_while_kombu_retried_a_nack_is_an_outage_not_a_refusal() -> None:
    # The retry reconnects while handling the nack: the connection refused holds it as its context, not cause.
    failure = through_kombus_retry(max_retries=1)
    assert isinstance(failure.__cause__, ConnectionRefusedError)
    assert isinstance(failure.__cause__.__context__, MessageNacked)
    assert not refused(failure)


def test_a_cyclic_chain_ends() -> None:
    first, second = OperationalError("a"), OperationalError("b")
    first.__cause__, second.__cause__ = second, first
    assert not refused(first)


@pytest.mark.parametrize("failure", [MessageNacked, lambda: through_kombus_retry(max_retries=0)],
                         ids=["bare", "kombu-wrapped"])
def test_a_refused_publish_is_queue_full_and_leaves_the_circuit_closed(
        circuit: Circuit, failure: Callable[[], Exception], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.broker.circuit"), pytest.raises(QueueFull) as raised, \
            circuit.guard("enqueuing a task"):
        raise failure()
    assert raised.value.__suppress_context__ and raised.value.headers == {"Retry-After": "1"}
    assert raised.value.message == QueueFull.refused  # no depth: the broker did not say how much waits
    assert not circuit.is_open()
    with circuit.guard("enqueuing a task"):
        pass  # the next publish that fits goes ahead at once
    [record] = caplog.records
    assert "refused 1 publish (enqueuing a task)" in record.getMessage() and "Redis" not in record.getMessage()
    assert record.exc_info is None


def test_refusals_are_logged_at_most_once_a_second_with_their_count(
        circuit: Circuit, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    guard = circuit.guard("enqueuing a task")
    with caplog.at_level(logging.WARNING, logger="api.broker.circuit"):
        for _ in range(5):
            with pytest.raises(QueueFull), guard:
                raise MessageNacked()
            clock.now += 0.1
        assert len(caplog.records) == 1
        clock.now += 0.6  # a second after the first line
        with pytest.raises(QueueFull), guard:
            raise MessageNacked()
    assert "refused 5 publishes" in caplog.records[1].getMessage()  # the four since the first line, and this one
    assert not circuit.is_open()


def test_an_outage_after_refusals_still_trips_the_circuit(circuit: Circuit, caplog: pytest.LogCaptureFixture) -> None:
    guard = circuit.guard("enqueuing a task")
    with pytest.raises(QueueFull), guard:
        raise MessageNacked()
    with caplog.at_level(logging.WARNING, logger="api.broker.circuit"), pytest.raises(QueueUnavailable), guard:
        raise through_kombus_retry(max_retries=1)
    assert circuit.is_open()
    assert caplog.records[-1].getMessage().startswith("Redis is down (enqueuing a task)")
