"""The Redis transport the API and the workers use: kombu's, with three behaviours stacked in this order.

1. ``brpop``: kombu's channel, made to deliver a BRPOP reply it lost track of and to drop, count and
   acknowledge payloads that are not kombu messages (one log line each, never a dead worker).
2. ``client_per_pool`` (FAST_PATHS=1): one Redis client per connection pool, not one per publish, get and ack.
3. ``no_ack`` (FAST_PATHS=1): no Redis round trip to acknowledge a message of a no-ack consumer.

Each layer's ``Channel`` subclasses the one above it, so ``FAST`` has all three behaviours and ``GUARDED`` the first.
"""

from shared.transport import brpop, no_ack

GUARDED = brpop.TRANSPORT  # FAST_PATHS=0: kombu's own transport with only its BRPOP bug fixed and the guard
FAST = no_ack.TRANSPORT  # FAST_PATHS=1: all three layers

__all__ = ["FAST", "GUARDED"]
