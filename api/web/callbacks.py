"""The Callback-URL header of an async submit: checked before anything is queued (docs/api.md, "Webhooks")."""

import redis
from flask import current_app, request

from api.broker.timeouts import redis_client
from api.errors import CallbacksFull, ValidationFailed
from shared import webhooks
from shared.settings import Settings

HEADER = "Callback-URL"
_CLIENT = "iris.callbacks"  # app.extensions key of the Redis client that counts pending deliveries


def requested(settings: Settings) -> str | None:
    """Return the request's Callback-URL if the service may take it, None if it sent none; else raise a 400 saying
    why (webhooks off, URL not allowed), or a 503 when WEBHOOK_MAX_PENDING deliveries are pending."""
    url = request.headers.get(HEADER)
    if url is None:
        return None
    if settings.webhook_secret is None:
        raise ValidationFailed(f"{HEADER} refused: webhooks are off on this service (WEBHOOK_SECRET is not set); "
                               f"send the request without {HEADER} and poll status_url")
    try:
        webhooks.check_url(url, webhooks.parse_allowed(settings.webhook_allowed_hosts), settings.webhook_allow_http)
    except webhooks.UrlRefused as exc:
        # The URL itself is not echoed: its query may hold a token of the client's.
        raise ValidationFailed(f"{HEADER} refused: {exc}") from None
    # Full when the set has a member at index WEBHOOK_MAX_PENDING - 1 (ZRANGE, which Redis's ACL for the stack
    # allows). A Redis that does not answer raises through to the error handlers' 503 QueueUnavailable.
    last = settings.webhook_max_pending - 1
    if _client(settings).zrange(webhooks.due_key(settings.key_prefix), last, last):
        raise CallbacksFull(settings.webhook_max_pending)
    return url


def _client(settings: Settings) -> redis.Redis:
    """Return this app's client of the result backend's Redis, where deliveries are recorded; built on first use."""
    client: redis.Redis | None = current_app.extensions.get(_CLIENT)
    if client is None:
        client = current_app.extensions[_CLIENT] = redis_client(settings.celery_result_backend,
                                                                settings.api_redis_timeout_seconds)
    return client
