"""The ledger's contract with kombu: the kombu code it repeats or relies on, and its keys and options.

Its behaviour on a real Redis is tests/integration/shared/transport/test_ledger.py.
"""

import hashlib
import inspect
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from shared.celery_app import create_celery
from shared.settings import Settings
from shared.transport import brpop, ledger, no_ack

# sha256 of kombu 5.7.0's sources that shared/transport/ledger.py repeats (QoS.append) or relies on the shape of.
KOMBU_SOURCES = {
    kombu_redis.QoS.append: "35c655f6ecc62fe6e9902f7498dde9b47ff27187973d7568e02529c400027416",
    kombu_redis.Channel._put: "1c0cf9749576614c3c62223ac59372df418ed4274d791fcd8f7e5ad7994ce72c",
    kombu_redis.QoS.restore_visible: "d4a4a40a3eaf9f23ed3651a5c03602c80571bd30c49bf256f0b65fbd6dae3851",
    kombu_redis.Channel._do_restore_message: "8b430df94e45b5b0183c97f12a3eff8c1bc23bb227d1ebc0f3963f528546968a",
}


@pytest.mark.parametrize("function", KOMBU_SOURCES, ids=lambda f: f.__qualname__)
def test_the_kombu_code_the_ledger_repeats_or_relies_on_is_unchanged(function: Any) -> None:
    source = inspect.getsource(function)
    assert hashlib.sha256(source.encode()).hexdigest() == KOMBU_SOURCES[function], (
        f"kombu's {function.__qualname__} changed: re-check shared/transport/ledger.py against it, then re-pin")


class Recorder:
    """A pipeline stand-in that records the commands added to it."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def command(*args: Any) -> "Recorder":
            self.commands.append((name, args))
            return self
        return command


def test_forgetting_a_tag_removes_it_from_each_queues_ledger_messages_and_suspects() -> None:
    pipe = Recorder()
    assert ledger.forget(pipe, ["iris", "other"], "tag-1") is pipe
    expected = []
    for queue in ("iris", "other"):
        index, messages, suspects = ledger.ledger_keys(queue)
        expected += [("zrem", (index, "tag-1")), ("hdel", (messages, "tag-1")), ("zrem", (suspects, "tag-1"))]
    assert pipe.commands == expected


def test_each_queue_has_its_own_ledger_keys() -> None:
    assert ledger.ledger_keys("iris") == ("_iris.ledger:iris", "_iris.ledger:iris:messages",
                                          "_iris.ledger:iris:suspects")
    assert set(ledger.ledger_keys("iris")).isdisjoint(ledger.ledger_keys("iris.rows"))


def test_every_redis_channel_of_the_stack_ledgers() -> None:
    for channel in (brpop.Channel, no_ack.Channel):
        assert issubclass(channel, ledger.Channel) and channel.QoS is ledger.QoS
        assert {"ledger_queues", "ledger_max_age", "max_message_bytes"} <= set(channel.from_transport_options)


def test_the_task_queue_is_ledgered_and_the_rows_queue_is_not() -> None:
    settings = Settings(celery_broker_url="redis://127.0.0.1:1/0", iris_queue="tasks")
    options = create_celery(settings).conf.broker_transport_options
    assert options["ledger_queues"] == ("tasks",)
    assert settings.rows_queue not in options["ledger_queues"]
    assert options["ledger_max_age"] == settings.result_expires_seconds


def test_a_rabbitmq_broker_gets_no_ledger() -> None:
    settings = Settings(celery_broker_url="amqp://guest:guest@127.0.0.1:1//")
    assert "ledger_queues" not in create_celery(settings).conf.broker_transport_options
