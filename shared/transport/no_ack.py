"""kombu's Redis transport, skipping the Redis round trip of acknowledging a message consumed with ``no_ack``.

Written against kombu 5.7.0. A queue consumed with ``no_ack=True`` (the edge batches' rows queue,
shared/celery_app.py) is not recorded in kombu's unacknowledged hash on delivery, but Celery still acknowledges
each of its messages, and the virtual transport's ``basic_ack`` then runs a MULTI/ZREM/HDEL/EXEC transaction for
a record that was never written. kombu's ``Message.ack`` already returns early for a consumer listed in
``channel.no_ack_consumers`` (the AMQP transports fill it in); the virtual channel leaves it None. This channel
fills it in, and names the consumer in each such message's ``delivery_info`` as AMQP does, so that check works.
``load/bench_worker.py`` measures what it saves of a worker's CPU per edge batch (docs/design.md, "Fast paths").

tests/unit/shared/transport/test_no_ack.py pins what this relies on: ``Message.ack`` reads
``channel.no_ack_consumers`` and ``delivery_info["consumer_tag"]``, and the virtual ``basic_consume`` hands the
callback one ``Message`` per delivery. With FAST_PATHS=0, shared/transport/brpop.py's transport acknowledges
such messages with the transaction, which removes nothing and changes nothing else.
"""

from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis

from shared.transport import client_per_pool


class Channel(client_per_pool.Channel):
    """A kombu Redis channel (with the create-client bypass) whose no-ack messages acknowledge for free."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.no_ack_consumers: set[str] = set()  # type: ignore[assignment]  # None in kombu: "none listed"
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, callback: Callable[[Any], Any], consumer_tag: str,
                      **kwargs: Any) -> Any:
        """Consume ``queue``; a no-ack consumer's messages carry its tag, so acknowledging them does nothing."""
        if no_ack:
            self.no_ack_consumers.add(consumer_tag)
            deliver = callback

            def callback(message: Any) -> Any:
                message.delivery_info["consumer_tag"] = consumer_tag
                return deliver(message)

        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        self.no_ack_consumers.discard(consumer_tag)
        return super().basic_cancel(consumer_tag)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
