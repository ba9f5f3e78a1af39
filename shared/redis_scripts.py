"""Lua scripts registered once per Redis client, for the modules that run them on a client they are handed."""

import functools
from typing import Any


@functools.lru_cache(maxsize=32)
def registered(client: Any, source: str) -> Any:
    """Register ``source`` on ``client`` once (redis-py sends EVALSHA, then EVAL if Redis lost the script)."""
    return client.register_script(source)
