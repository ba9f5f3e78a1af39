"""The Redis transport the API and the workers use: kombu's, with four behaviours stacked in this order.

1. ``ledger``: a copy of each message of an acknowledged queue from its publish until a worker holds it, so a
   BRPOP reply the network dropped is restored, not lost.
2. ``brpop``: kombu's channel, made to deliver a BRPOP reply it lost track of and to drop, count and
   acknowledge payloads that are not kombu messages (one log line each, never a dead worker).
3. ``client_per_pool`` (FAST_PATHS=1): one Redis client per connection pool, not one per publish, get and ack.
4. ``no_ack`` (FAST_PATHS=1): no Redis round trip to acknowledge a message of a no-ack consumer.

Each layer's ``Channel`` subclasses the one above it, so ``FAST`` has all four behaviours and ``GUARDED`` the first two.
"""

from shared.transport import brpop, no_ack

GUARDED = brpop.TRANSPORT  # FAST_PATHS=0: kombu's own transport with only the ledger, its BRPOP fix and the guard
FAST = no_ack.TRANSPORT  # FAST_PATHS=1: all four layers

__all__ = ["FAST", "GUARDED"]
