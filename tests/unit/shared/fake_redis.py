"""A redis-py stand-in for the kombu transport tests: clients that never connect, and channels built on them."""

from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

# Nothing listens here: every client below is a FakeRedis, which never connects.
URL = "redis://127.0.0.1:1/0"


class FakePipeline:
    """A redis-py pipeline stand-in that accepts any chained command and executes nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self

    def execute(self) -> list[Any]:
        return []

    def __enter__(self) -> "FakePipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def fake_redis_class() -> type:
    """Return a redis.Redis stand-in class that counts the clients built and keeps lists in memory."""
    lists: dict[str, list[Any]] = defaultdict(list)

    class FakeRedis:
        built: list["FakeRedis"] = []

        def __init__(self, connection_pool: Any = None, **kwargs: Any) -> None:
            self.connection_pool = connection_pool
            FakeRedis.built.append(self)

        def ping(self) -> bool:
            return True

        def lpush(self, key: str, value: Any) -> None:
            lists[key].insert(0, value)

        def rpop(self, key: str) -> Any:
            return lists[key].pop() if lists[key] else None

        def pipeline(self, transaction: bool = True) -> FakePipeline:
            return FakePipeline()

        def register_script(self, script: str) -> Any:
            return SimpleNamespace(registered_client=self)

    return FakeRedis


def install(monkeypatch: pytest.MonkeyPatch) -> type:
    """Make every kombu Redis channel build FakeRedis clients; return the FakeRedis class."""
    fake = fake_redis_class()
    monkeypatch.setattr(kombu_redis.Channel, "_get_client", lambda self: fake)
    return fake


def open_channel(transport: type) -> Iterator[Any]:
    """Yield a channel of ``transport``, closing its connection afterwards."""
    with Connection(URL, transport=transport) as conn:
        yield conn.channel()
