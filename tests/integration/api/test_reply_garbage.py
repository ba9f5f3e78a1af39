"""Garbage published on the API's reply channels loses no worker's reply: the listener skips and counts each
malformed message and keeps its subscription, so sync requests keep their latency (api/batching/replies.py)."""

import http.client
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import SEED_EXAMPLE, RedisServer, WorkerProcess, api_server

pytestmark = pytest.mark.integration

FLOOD_SECONDS = 10.0
EVERY_SECONDS = 0.05
MIN_REQUESTS = 100
P99_SECONDS = 0.5
# What anyone allowed to PUBLISH on the backend's Redis could send instead of a worker's reply, in turn.
GARBAGE = [
    b"[]",
    b"not json",
    b"\xff\xfe\x00",
    b"null",
    b'{"ids": "t1", "results": [1]}',
    b'{"ids": [1, 2], "results": [1, 2]}',
    b'{"ids": [["t1"]], "results": [1]}',
    b'{"ids": ["t1", "t2"], "results": [1]}',
    b'{"ids": ["t1"], "error": "boom"}',
    b'{"ids": ["t1"]}',
    b"[" * 5000,
    b'{"ids": ["t1"], "results": ["' + b"x" * 2_000_000 + b'"]}',  # over the API's bound for a reply
]
# Well formed, for ids nobody waits for: ignored, not counted as garbage.
UNKNOWN_IDS = json.dumps({"ids": [str(uuid.uuid4())], "results": [{"pred_label": "Iris-setosa"}]}).encode()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: its garbage reaches no other test's API."""
    server = RedisServer(tmp_path / "redis", aof=False).start()
    yield server
    server.stop()


class Flood:
    """Publish the next kind of garbage to every reply channel of ``prefix`` every EVERY_SECONDS, in a thread."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.pattern = client, f"{prefix}reply:*"
        self.stop = threading.Event()
        self.delivered = 0  # garbage messages a subscriber received (PUBLISH answers how many did)
        self.rounds = 0
        self.channels: set[bytes | str] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        kinds = [*GARBAGE, UNKNOWN_IDS]
        while not self.stop.is_set():
            channels = self.client.pubsub_channels(self.pattern)
            self.channels.update(channels)
            for channel in channels:
                data = kinds[self.rounds % len(kinds)]
                received = self.client.publish(channel, data)
                if data is not UNKNOWN_IDS:
                    self.delivered += received
            self.rounds += 1
            self.stop.wait(EVERY_SECONDS)


def rejected_total(base: str) -> float:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "iris_rejected_replies_total")


def test_sync_requests_keep_their_replies_while_every_reply_channel_gets_garbage(
        stack_env: dict[str, str], backend: RedisServer, tmp_path: Path) -> None:
    prefix = f"iris-garbage-{uuid.uuid4().hex[:8]}:"
    env = {**stack_env, "CELERY_BROKER_URL": backend.url(0), "CELERY_RESULT_BACKEND": backend.url(1),
           "KEY_PREFIX": prefix, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
    worker = WorkerProcess(env).start()
    client = backend.client(1)
    try:
        with api_server(env, server="granian") as base:
            host, port = base.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=15)  # one keep-alive connection

            def classify() -> float:
                started = time.perf_counter()
                conn.request("POST", "/v1/classify", body=json.dumps(SEED_EXAMPLE),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = json.loads(resp.read())
                assert resp.status == 200, body
                assert body["data"]["pred_label"] == "Iris-virginica"
                return time.perf_counter() - started

            classify()  # the serving process subscribes to its reply channel on its first request
            flood = Flood(client, prefix)
            flood.thread.start()
            latencies: list[float] = []
            deadline = time.monotonic() + FLOOD_SECONDS
            try:
                while time.monotonic() < deadline:
                    latencies.append(classify())
            finally:
                flood.stop.set()
                flood.thread.join(10)
            conn.close()
            time.sleep(0.5)  # the last garbage reaches the listener
            rejected = rejected_total(base)
    finally:
        worker.stop()
        client.close()

    latencies.sort()
    p99 = latencies[math.ceil(0.99 * len(latencies)) - 1]
    print(f"{len(latencies)} sync requests in {FLOOD_SECONDS:g} s under {flood.delivered} garbage messages on "
          f"{len(flood.channels)} channel(s): median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; {rejected:g} rejected")
    assert len(latencies) >= MIN_REQUESTS
    assert p99 < P99_SECONDS
    # The garbage reached the channel the requests were answered on, all along, and each message was counted.
    assert flood.channels and flood.rounds >= FLOOD_SECONDS / EVERY_SECONDS / 2
    assert flood.delivered >= flood.rounds * len(GARBAGE) / (len(GARBAGE) + 1) - 1
    assert rejected == flood.delivered
