"""Publish an edge batch's task message with kombu's ``Channel.basic_publish``, past Celery's ``send_task_message``.

Why: measured on 2 cores against a local Redis (``python -m load.bench_publish``: median of 5 alternating
rounds of 3,000 publishes of an 8-row ``iris.classify_rows`` message), this path costs 234 µs a publish,
Celery's documented ``app.amqp.send_task_message`` with a kept ``Producer`` 288 µs and ``send_task`` 375 µs.
The difference is send_task_message's retry-policy merging and kombu's ``Producer.publish`` (serializer
registry, declare cache, header copies) on every message.

It still fires Celery's ``before_task_publish`` and ``after_task_publish`` signals, so Flower, OpenTelemetry
and other observers see edge batches as they see any task. Written against Celery 5.7.0 and kombu 5.7.0
(pinned in pyproject.toml); tests/unit/api/test_publisher.py fails if the message it builds stops
matching the documented path's. FAST_PATHS=0 selects the documented path instead (api/publisher.py).
"""

from typing import Any

from celery import signals
from kombu import serialization


def basic_publish(channel: Any, name: str, message: tuple[dict[str, Any], dict[str, Any], Any, Any],
                  queue: str, headers: dict[str, Any]) -> None:
    """Put ``message`` (from ``app.amqp.as_task_v2``) on ``queue`` via the default exchange, persistent."""
    task_headers, properties, body, _ = message
    task_headers.update(headers)
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(sender=name, body=body, exchange="", routing_key=queue, declare=[],
                                         headers=task_headers, properties=properties, retry_policy=None)
    content_type, encoding, data = serialization.dumps(body, "json")
    prepared = channel.prepare_message(data, None, content_type, encoding, task_headers,
                                       {**properties, "delivery_mode": 2})
    channel.basic_publish(prepared, exchange="", routing_key=queue)
    if signals.after_task_publish.receivers:
        signals.after_task_publish.send(sender=name, body=body, exchange="", routing_key=queue,
                                        headers=task_headers, properties=properties)
