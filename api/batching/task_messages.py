"""Publish an edge batch's task message straight onto its queue, past Celery's ``send_task_message`` and kombu's
``Producer.publish`` and ``Channel.basic_publish``.

Why: it costs about half the CPU of Celery's documented ``app.amqp.send_task_message`` per publish
(``python -m load.bench_publish``; docs/design.md has the figures). The difference is ``as_task_v2`` and
``saferepr`` on every message, kombu's serializer registry, message preparation and header copies, and the
stdlib JSON encoder, twice.

How: :class:`EdgeMessages` asks Celery's ``as_task_v2`` once for the protocol-2 headers and properties of the
task, and per batch fills in only what differs (the ids, ``argsrepr`` and the extra headers). It builds the very
dict kombu's virtual transport stores (body JSON-encoded, then base64, as kombu's Redis transport does) and
hands it to the channel's ``_put``; on Redis it LPUSHes the orjson encoding of that dict itself. Celery's
``before_task_publish`` and ``after_task_publish`` signals still fire, so Flower, OpenTelemetry and other
observers see edge batches as they see any task.

Written against Celery 5.7.0 and kombu 5.7.0 (pinned in pyproject.toml); tests/unit/api/batching/test_publisher.py
fails if the message it builds stops matching the documented path's, on kombu's memory transport and on its Redis
transport. FAST_PATHS=0 selects the documented path instead (api/batching/publisher.py).
"""

import base64
from typing import Any

import orjson
from celery import Celery, signals
from kombu.transport import redis as kombu_redis

from api.batching import task_ids

# Celery's protocol-2 body: (args, kwargs, embed), with no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class EdgeMessages:
    """Build and put ``name`` task messages for ``queue``, from the headers Celery gives that task."""

    def __init__(self, celery: Celery, name: str, queue: str) -> None:
        self.name = name
        self.queue = queue
        headers, properties, _, _ = celery.amqp.as_task_v2("", name, args=(), kwargs={}, argsrepr="",
                                                           kwargsrepr="{}", ignore_result=True)
        self._headers: dict[str, Any] = headers
        self._properties: dict[str, Any] = properties

    def build(self, args: list[Any], argsrepr: str, headers: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Return (the message as kombu's virtual channel stores it, the task body) for one task of ``args``."""
        task_id = task_ids.uuid4()
        task_headers = {**self._headers, "id": task_id, "root_id": task_id, "argsrepr": argsrepr, **headers}
        body: tuple[list[Any], dict[str, Any], dict[str, Any]] = (args, {}, _EMBED)
        message = {
            "body": base64.b64encode(orjson.dumps(body)).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": task_headers,
            "properties": {**self._properties, "correlation_id": task_id, "delivery_mode": 2,
                           "delivery_info": {"exchange": "", "routing_key": self.queue}, "priority": 0,
                           "body_encoding": "base64", "delivery_tag": task_ids.uuid4()},
        }
        return message, body

    def put(self, channel: Any, args: list[Any], argsrepr: str, headers: dict[str, Any]) -> None:
        """Put one message on the queue through ``channel`` (a kombu virtual channel), firing Celery's signals."""
        message, body = self._before(args, argsrepr, headers)
        if isinstance(channel, kombu_redis.Channel):
            with channel.conn_or_acquire() as client:  # what kombu's Redis _put does, with orjson's encoding
                client.lpush(self.queue, orjson.dumps(message))
        else:
            channel._put(self.queue, message)
        self._after(message, body)

    def push(self, connection: Any, args: list[Any], argsrepr: str, headers: dict[str, Any]) -> Any:
        """Write the LPUSH of one message to ``connection`` (a redis-py Connection) without reading Redis's reply;
        return the packed command, to send again if that reply is an error. Fires Celery's signals."""
        message, body = self._before(args, argsrepr, headers)
        packed = connection.pack_command("LPUSH", self.queue, orjson.dumps(message))
        connection.send_packed_command(packed)
        self._after(message, body)
        return packed

    def _before(self, args: list[Any], argsrepr: str, headers: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        message, body = self.build(args, argsrepr, headers)
        if signals.before_task_publish.receivers:
            signals.before_task_publish.send(sender=self.name, body=body, exchange="", routing_key=self.queue,
                                             declare=[], headers=message["headers"],
                                             properties=message["properties"], retry_policy=None)
        return message, body

    def _after(self, message: dict[str, Any], body: Any) -> None:
        if signals.after_task_publish.receivers:
            signals.after_task_publish.send(sender=self.name, body=body, exchange="", routing_key=self.queue,
                                            headers=message["headers"], properties=message["properties"])
