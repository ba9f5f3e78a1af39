"""kombu's Redis transport, made to keep a copy of each task of an acknowledged queue until a worker holds it.

The gap (kombu 5.7.0): BRPOP removes a message from its list when Redis writes the reply, and kombu records it
in its ``unacked`` hash only once the worker has read that reply. A reply the network drops (a pulled cable, a
partition, a peer that vanished without a FIN) takes the message with it: it is in neither the list nor
``unacked``, so no visibility timeout brings it back. ``make drill-hosts`` lost one async task in 5 of 15 runs
this way: Redis handed the next task to the cut worker's BRPOP, and kombu dropped that connection 6 s later
("Redis BRPOP got no reply"). docs/reliability.md has the runs.

The ledger closes it. Publishing to a ledgered queue (the ``ledger_queues`` transport option: shared/celery_app.py
names the acknowledged task queue, never the edge batches' no-ack rows queue) LPUSHes the message and records a
copy under its delivery tag in one script (:data:`PUBLISH`). Delivery removes the copy in the same MULTI in which
kombu writes the message into ``unacked`` (:meth:`QoS.append`). So a message is always in its list, in the ledger
or in ``unacked``, and each of those has a way back:

- ``unacked``: kombu's visibility timeout (its restore sweep);
- the ledger: :data:`SWEEP`, run by every worker's restore sweep. It reads the oldest entries of a queue's
  ledger; one still in the list means every younger one is too (FIFO), so it stops there. An entry in neither
  place was popped and never delivered; once that has held for ``visibility_timeout`` seconds (Redis's clock),
  it is pushed back onto the end BRPOP takes from and its wait starts again.

What it costs: the publish is one script call instead of one LPUSH, delivery adds three commands to kombu's MULTI,
and a queued task's payload is held twice in Redis. The ledger is bounded as its queue is (QUEUE_MAX_LENGTH
admits, the sweep drops what waited longer than ``ledger_max_age``, and purging the queue clears it). Workers
must run this code before an API that writes a ledger does (upgrade workers first): a worker that does not
remove entries would see each of its tasks restored once per visibility timeout.

Written against kombu 5.7.0 (pinned): tests/unit/shared/transport/test_ledger.py pins the source of
``QoS.append`` that :meth:`QoS.append` repeats and of ``Channel._put`` that :meth:`Channel._put` replaces.
"""

import logging
from collections.abc import Callable, Iterable
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

log = logging.getLogger(__name__)

#: KEYS: the list, the ledger, its messages; ARGV: the tag, the payload. The ledger's score is Redis's clock.
PUBLISH = """
redis.call('LPUSH', KEYS[1], ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(now[1]) + tonumber(now[2]) / 1e6, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], KEYS[1] .. '\\n' .. ARGV[2])
return 1
"""

#: KEYS: the ledger, its messages, its suspects; ARGV: grace seconds, entries to read, max age seconds.
#: Returns {restored, expired}. A message entry is "<list key>\\n<payload>"; JSON payloads hold no raw newline.
SWEEP = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local grace, limit, max_age = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local restored, expired = 0, 0
for _, tag in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - max_age, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[1], tag)
  redis.call('HDEL', KEYS[2], tag)
  redis.call('ZREM', KEYS[3], tag)
  expired = expired + 1
end
for _, tag in ipairs(redis.call('ZRANGE', KEYS[1], 0, limit - 1)) do
  local entry = redis.call('HGET', KEYS[2], tag)
  if not entry then
    redis.call('ZREM', KEYS[1], tag)
    redis.call('ZREM', KEYS[3], tag)
  else
    local cut = string.find(entry, '\\n', 1, true)
    local list, payload = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
    if redis.call('LPOS', list, payload, 'RANK', -1) then
      redis.call('ZREM', KEYS[3], tag)
      break
    end
    local since = redis.call('ZSCORE', KEYS[3], tag)
    if not since then
      redis.call('ZADD', KEYS[3], now, tag)
    elseif now - tonumber(since) >= grace then
      redis.call('RPUSH', list, payload)
      redis.call('ZADD', KEYS[1], now, tag)
      redis.call('ZREM', KEYS[3], tag)
      restored = restored + 1
    end
  end
end
return {restored, expired}
"""


def ledger_keys(queue: str) -> tuple[str, str, str]:
    """Name the ledger of ``queue``: its tags by time, its messages by tag, and its suspects by time first missed."""
    base = f"_iris.ledger:{queue}"
    return base, f"{base}:messages", f"{base}:suspects"


def forget(pipe: Any, queues: Iterable[str], tag: str) -> Any:
    """Add to ``pipe`` the removal of ``tag`` from the ledgers of ``queues``; return ``pipe``."""
    for queue in queues:
        ledger, messages, suspects = ledger_keys(queue)
        pipe.zrem(ledger, tag).hdel(messages, tag).zrem(suspects, tag)
    return pipe


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, which also removes a delivered message from its ledger and sweeps the ledgers."""

    def append(self, message: Any, delivery_tag: str) -> None:
        """Record ``message`` as unacknowledged, as kombu 5.7 does, and drop its ledger copy in the same MULTI."""
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()}).hset(
                self.unacked_key, delivery_tag, dumps([message._raw, exchange, routing_key]))
            forget(pipe, self.channel.consumed_ledgers(), delivery_tag).execute()
            virtual.QoS.append(self, message, delivery_tag)  # kombu's Redis QoS.append ends with this too

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Restore overdue unacknowledged messages as kombu does, then sweep the ledgers of consumed queues."""
        super().restore_visible(start, num, interval)
        if (self._vrestore_count - 1) % (interval or 1):  # kombu's throttle: sweep when it did
            return
        self.channel.sweep_ledgers()


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that ledgers the messages it publishes to the ``ledger_queues`` transport option."""

    QoS = QoS
    #: Queues whose messages are ledgered until delivered: consumed with acknowledgements only. A transport option.
    ledger_queues: tuple[str, ...] = ()
    #: Entries older than this many seconds are dropped by the sweep: nobody is waiting for their answer.
    ledger_max_age: float = 86400.0
    #: Ledger entries each sweep reads per queue.
    ledger_sweep_limit: int = 100
    #: Queues this channel has taken messages from with acknowledgements, which :meth:`QoS.append` records.
    _acked_queues: frozenset[str] = frozenset()
    from_transport_options = (*kombu_redis.Channel.from_transport_options,  # type: ignore[assignment]
                              "ledger_queues", "ledger_max_age", "ledger_sweep_limit")

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """Put ``message`` on ``queue`` as kombu does; on a ledgered queue, with its ledger copy, in one script."""
        if queue not in self.ledger_queues or kwargs.get("_publish_batch") is not None or (
                self._expires and queue in self._expires):
            return super()._put(queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            self._script(client, PUBLISH)(keys=[key, *ledger_keys(queue)[:2]],
                                         args=[message["properties"]["delivery_tag"], dumps(message)],
                                         client=client)
        return None

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        """Push a restored message back as kombu does and ledger it again, so its next pop is covered too."""
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        tag = payload.get("properties", {}).get("delivery_tag") if isinstance(payload, dict) else None
        if tag is None:
            return
        for queue in self._lookup(exchange, routing_key):
            if queue in self.ledger_queues:
                key = self._q_for_pri(queue, self._get_message_priority(payload, reverse=False))
                ledger, messages, _ = ledger_keys(queue)
                pipe.zadd(ledger, {tag: time()}).hset(messages, tag, f"{key}\n{dumps(payload)}")

    def _purge(self, queue: str) -> int:
        """Purge ``queue`` as kombu does, and its ledger with it."""
        size = int(super()._purge(queue))
        if queue in self.ledger_queues:
            with self.conn_or_acquire() as client:
                client.delete(*ledger_keys(queue))
        return size

    def basic_consume(self, queue: str, no_ack: bool, callback: Callable[[Any], Any], consumer_tag: str,
                      **kwargs: Any) -> Any:
        """Consume ``queue``; a ledgered queue consumed without acknowledgements forgets each message on delivery."""
        if not no_ack:
            self._acked_queues = self._acked_queues | {queue}
        elif queue in self.ledger_queues:
            deliver = callback

            def callback(message: Any) -> Any:
                with self.conn_or_acquire() as client:
                    forget(client.pipeline(), (queue,), message.delivery_tag).execute()
                return deliver(message)

        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Get one message as kombu does; from a ledgered queue without acknowledgement, forget it too."""
        if not no_ack:
            self._acked_queues = self._acked_queues | {queue}
        message = super().basic_get(queue, no_ack, **kwargs)
        if message is not None and no_ack and queue in self.ledger_queues:
            with self.conn_or_acquire() as client:
                forget(client.pipeline(), (queue,), message.delivery_tag).execute()
        return message

    def consumed_ledgers(self) -> tuple[str, ...]:
        """Name the ledgers this channel removes deliveries from: its ledgered queues, and those it consumes with acks.

        Not only ``ledger_queues``: a worker given other queues with -Q than the ones it ledgers must still remove
        what it takes from their ledgers, or a worker that sweeps them would hand each message back to run again.
        An empty ledger costs three commands per delivery and one sweep. Queues consumed without acknowledgements
        (the rows queue) are left out: only a ledgered one is forgotten on delivery (:meth:`basic_consume`).
        """
        return tuple(dict.fromkeys((*self.ledger_queues, *sorted(self._acked_queues))))

    def forget_delivery(self, tag: str) -> None:
        """Remove ``tag`` from every ledger: its message was dropped, and must not be handed back."""
        if queues := self.consumed_ledgers():
            with self.conn_or_acquire() as client:
                forget(client.pipeline(), queues, tag).execute()

    def sweep_ledgers(self) -> int:
        """Push back each ledgered message popped and never delivered for ``visibility_timeout``; return how many."""
        # Whoever consumes a queue sweeps its ledger, as it removes its deliveries from it.
        queues = [queue for queue in self.consumed_ledgers() if queue in self._active_queues]
        restored = 0
        if not queues:
            return 0
        with self.conn_or_acquire() as client:
            sweep = self._script(client, SWEEP)
            for queue in queues:
                back, expired = sweep(keys=list(ledger_keys(queue)), client=client,
                                      args=[self.visibility_timeout, self.ledger_sweep_limit, self.ledger_max_age])
                if back:
                    log.warning("restored %d task(s) of queue %s that Redis popped for a worker that never "
                                "received them (a lost BRPOP reply)", back, queue)
                if expired:
                    log.warning("dropped %d ledger entr%s of queue %s older than %.0f s", expired,
                                "y" if expired == 1 else "ies", queue, self.ledger_max_age)
                restored += int(back)
        return restored

    def _script(self, client: Any, source: str) -> Any:
        """Return ``source`` as a redis-py Script (EVALSHA, loaded again after a restart); call it with a client."""
        scripts: dict[str, Any] = self.__dict__.setdefault("_iris_scripts", {})
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = client.register_script(source)
        return script


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
