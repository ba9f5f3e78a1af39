"""Signed webhooks: record a delivery when a task with a callback URL ends, and send it, retrying with backoff.

When a task whose message carries the ``callback_url`` header ends (SUCCESS or FAILURE), the process that ran it
reads the result Celery just stored and records a delivery in the result backend's Redis: a hash per task id
(the URL, the exact body GET /v1/tasks/<id> answers, attempts, state) and the task id in a sorted set scored by
when its next attempt is due. The record is written before the task's message is acknowledged, so a worker
killed between the result and the record runs the task again (late acknowledgement) and records it then; a
task recorded once is never recorded twice.

Each worker's main process runs one deliverer thread (WEBHOOK_SECRET set). It claims the earliest due delivery
with a Lua script that moves its score forward by a lease, so no two workers send the same attempt, and a
deliverer killed mid-attempt loses its lease to the next worker. It resolves the host, checks every address
(shared/webhooks.py), connects to a checked one, POSTs the signed body and follows no redirect. A 2xx ends the
delivery; anything else, a timeout or a refused connection is retried WEBHOOK_BACKOFF_SECONDS x 2^(n-1) later,
up to WEBHOOK_MAX_ATTEMPTS, then recorded as failed. Records expire after the whole schedule and an hour.
"""

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis
from celery import Celery, signals, states

from shared import webhooks
from shared.redis_scripts import registered
from shared.settings import Settings
from shared.task_status import status_data, success_envelope

log = logging.getLogger(__name__)

# Outcomes counted by iris_webhook_deliveries_total: a 2xx; an attempt that failed and will be retried; a delivery
# whose attempts are spent; one whose host resolved to an address the policy refuses; one not recorded because
# WEBHOOK_MAX_PENDING deliveries were pending.
DELIVERED, RETRIED, FAILED, REFUSED, DROPPED = "delivered", "retried", "failed", "refused", "dropped"

# The deliverer looks for due deliveries this often when none was due at its last look.
POLL_SECONDS = 0.5

# Every script reads the time from Redis, one clock for all workers: a lease ends when Redis says so, whatever the
# hosts' clocks. (Redis 7 replicates a script's effects, so TIME before a write is allowed; 5 and 6 need the call.)
_NOW = """
if redis.replicate_commands then
  redis.replicate_commands()
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# KEYS: the due set, the record. ARGV: task id, URL, body, TTL, max pending. A record that exists is kept as it is
# (a task run again after its worker died must not be delivered twice); a full set (a member at index max - 1:
# ZRANGE, which the stack's Redis ACL allows, where ZCARD it does not) refuses it.
_RECORD = _NOW + """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if #redis.call('ZRANGE', KEYS[1], tonumber(ARGV[5]) - 1, tonumber(ARGV[5]) - 1) > 0 then
  return -1
end
redis.call('HSET', KEYS[2], 'url', ARGV[2], 'body', ARGV[3], 'attempts', 0, 'state', 'pending', 'created', now)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[1])
return 1
"""

# KEYS: the due set. ARGV: the lease in seconds, the records' prefix, the most attempts. Claims the earliest due
# delivery: its score moves to the lease's end and its attempts count up. Returns {id, url, body, attempt}; {id}
# for a member whose record expired or ended (dropped from the set); {id, 'failed'} for one whose last attempt's
# deliverer died (recorded as failed); nil when nothing is due.
_CLAIM = _NOW + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #due == 0 then
  return nil
end
local id = due[1]
local key = ARGV[2] .. id
local url = redis.call('HGET', key, 'url')
if not url or redis.call('HGET', key, 'state') ~= 'pending' then
  redis.call('ZREM', KEYS[1], id)
  return {id}
end
local attempt = tonumber(redis.call('HGET', key, 'attempts')) + 1
if attempt > tonumber(ARGV[3]) then
  redis.call('HSET', key, 'state', 'failed', 'last_error', 'no answer to the last attempt', 'updated', now)
  redis.call('ZREM', KEYS[1], id)
  return {id, 'failed'}
end
redis.call('HSET', key, 'attempts', attempt)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
return {id, url, redis.call('HGET', key, 'body'), attempt}
"""

# KEYS: the due set, the record. ARGV: task id, attempt, state ('pending' to retry, 'delivered', 'failed'), seconds
# until the next attempt, last error. Only the holder of the latest attempt may end it: a deliverer that outlived
# its lease changes nothing.
_FINISH = _NOW + """
if tonumber(redis.call('HGET', KEYS[2], 'attempts') or '-1') ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], 'state', ARGV[3], 'last_error', ARGV[5], 'updated', now)
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[4]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""


class Retryable(Exception):
    """An attempt that failed in a way a later attempt may not: a non-2xx status, a timeout, a lookup or a connect."""


class Recorder:
    """Record a delivery when a task with a callback URL ends (Celery's task_postrun, in the process that ran it)."""

    def __init__(self, settings: Settings, count: Callable[[str], None], wake: Callable[[], None]) -> None:
        self._settings = settings
        self._count = count
        self._wake = wake
        self._due = webhooks.due_key(settings.key_prefix)
        self._records = webhooks.record_prefix(settings.key_prefix)

    def task_ended(self, sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        """Record the delivery of ``task_id``'s answer if its message named a callback URL."""
        url = getattr(getattr(sender, "request", None), webhooks.CALLBACK_HEADER, None)
        if url is None or task_id is None or state not in (states.SUCCESS, states.FAILURE):
            return
        if not isinstance(url, str) or len(url) > webhooks.MAX_URL_LENGTH:
            log.warning("webhook for task %s: the callback_url header is not a URL string; not recorded", task_id)
            return
        try:
            # What GET /v1/tasks/<id> answers now, from the result as stored (a task run again keeps its first
            # SUCCESS), decoded as the API decodes it.
            meta = sender.backend.get_task_meta(task_id, cache=False)
            if meta.get("status") not in (states.SUCCESS, states.FAILURE):
                log.warning("webhook for task %s: its result is not stored; not recorded", task_id)
                return
            data = status_data(task_id, meta["status"], meta.get("result"))
            body = orjson.dumps(success_envelope(data, self._settings.tag))
            recorded = registered(sender.backend.client, _RECORD)(
                keys=[self._due, self._records + task_id],
                args=[task_id, url, body, self._settings.webhook_record_ttl_seconds,
                      self._settings.webhook_max_pending])
        except redis.RedisError as exc:
            # The message is still acknowledged: Redis just failed to give back or keep the result too.
            log.error("webhook for task %s: not recorded: %s", task_id, exc)
            return
        if recorded == -1:
            self._count(DROPPED)
            log.warning("webhook for task %s: dropped, %d deliveries are pending (WEBHOOK_MAX_PENDING)", task_id,
                        self._settings.webhook_max_pending)
        elif recorded == 1:
            self._wake()


class Deliverer:
    """One thread per worker process that sends due deliveries, one at a time."""

    def __init__(self, settings: Settings, client: Callable[[], redis.Redis], count: Callable[[str], None]) -> None:
        secret = settings.webhook_secret
        assert secret is not None, "webhooks are off without WEBHOOK_SECRET"
        self._secret = secret
        self._settings = settings
        self._client = client
        self._count = count
        self._allowed = webhooks.parse_allowed(settings.webhook_allowed_hosts)
        self._due = webhooks.due_key(settings.key_prefix)
        self._records = webhooks.record_prefix(settings.key_prefix)
        self._wakeup = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, **_: Any) -> None:
        """Start the thread (worker_init: the worker's main process)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="iris-webhooks", daemon=True)
            self._thread.start()

    def stop(self, **_: Any) -> None:
        """Let the thread end after its current attempt; a delivery it holds goes to another worker after its lease."""
        self._stopped.set()
        self._wakeup.set()

    def wake(self) -> None:
        """Look for due deliveries now (a task of this process just recorded one)."""
        self._wakeup.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wakeup.clear()  # before looking: a wake while it delivers makes it look again at once
            try:
                busy = self.deliver_one()
            except redis.RedisError as exc:
                log.warning("webhooks: cannot reach Redis: %s", exc)
                busy = False
            except (ValueError, OSError, http.client.HTTPException) as exc:  # a record someone else wrote badly
                log.error("webhooks: a delivery failed: %s: %s", type(exc).__name__, exc)
                busy = False
            if not busy:
                self._wakeup.wait(POLL_SECONDS)

    def deliver_one(self) -> bool:
        """Claim the earliest due delivery and make one attempt; return False when nothing was due."""
        claimed = registered(self._client(), _CLAIM)(keys=[self._due], args=[
            self._settings.webhook_lease_seconds, self._records, self._settings.webhook_max_attempts])
        if claimed is None:
            return False
        if len(claimed) == 2:  # its last attempt's deliverer died: nothing is known of that attempt
            self._count(FAILED)
            log.warning("webhook for task %s: failed, no answer to attempt %d", claimed[0].decode(),
                        self._settings.webhook_max_attempts)
        if len(claimed) < 4:
            return True  # expired, ended or failed: dropped from the set
        task_id, url, body, attempt = claimed[0].decode(), claimed[1].decode(), claimed[2], int(claimed[3])
        state, error = "delivered", ""
        try:
            send(url, body, task_id, attempt, self._secret.get_secret_value(), self._allowed, self._settings)
            self._count(DELIVERED)
        except webhooks.UrlRefused as exc:
            state, error = "failed", f"refused: {exc}"
            self._count(REFUSED)
            log.warning("webhook for task %s: refused: %s", task_id, exc)
        except Retryable as exc:
            error = str(exc)
            if attempt < self._settings.webhook_max_attempts:
                state = "pending"
                self._count(RETRIED)
            else:
                state = "failed"
                self._count(FAILED)
                log.warning("webhook for task %s: failed after %d attempts: %s", task_id, attempt, error)
        delay = webhooks.retry_delay(self._settings.webhook_backoff_seconds, attempt)
        registered(self._client(), _FINISH)(keys=[self._due, self._records + task_id],
                                         args=[task_id, attempt, state, delay, error])
        return True


def send(url: str, body: bytes, task_id: str, attempt: int, secret: str, allowed: webhooks.Allowed,
         settings: Settings) -> None:
    """POST ``body`` to ``url``, signed; raise UrlRefused if the policy refuses it, Retryable if the attempt failed."""
    target = webhooks.check_url(url, allowed, settings.webhook_allow_http)
    addresses = resolve(target, allowed)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "iris-webhooks/1",
        webhooks.SIGNATURE_HEADER: webhooks.signature(secret, body),
        webhooks.TASK_ID_HEADER: task_id,
        webhooks.TIMESTAMP_HEADER: str(int(time.time())),
        webhooks.ATTEMPT_HEADER: str(attempt),
    }
    timeout = settings.webhook_timeout_seconds
    failure = ""
    for address in addresses:
        conn = _connection(target, address, timeout)
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:  # socket.timeout, refused, TLS, a garbled answer
            failure = f"{address}: {type(exc).__name__}: {exc}"
            continue
        finally:
            conn.close()
        if 200 <= status < 300:
            return
        raise Retryable(f"answered {status}")  # redirects are not followed: a 3xx is a failed attempt
    raise Retryable(failure or "no address")


def resolve(target: webhooks.Target, allowed: webhooks.Allowed) -> list[str]:
    """Return the addresses of ``target``'s host, each allowed by the policy; UrlRefused if any is not."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Retryable(f"cannot resolve {target.host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        # An address the host resolves to now, not only the name checked at submit (DNS rebinding).
        webhooks.check_address(ipaddress.ip_address(address), allowed)
    return addresses


def _connection(target: webhooks.Target, address: str, timeout: float) -> http.client.HTTPConnection:
    """Return a connection to ``address`` that speaks to ``target``'s host (Host header, TLS name and certificate)."""
    if target.scheme == "https":
        return _PinnedHTTPS(target.host, target.port, address, timeout)
    return _PinnedHTTP(target.host, target.port, address, timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to the checked address, never a second lookup of the name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the checked address, verifying the certificate against the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def install(app: Celery, settings: Settings, count: Callable[[str], None] | None = None) -> Deliverer | None:
    """With WEBHOOK_SECRET set, record deliveries as tasks end and send them from a thread of the main process;
    without it, add nothing to the task path (a callback_url header is then ignored)."""
    if settings.webhook_secret is None:
        return None
    count = count or (lambda _outcome: None)
    deliverer = Deliverer(settings, lambda: app.backend.client, count)
    signals.worker_init.connect(deliverer.start, weak=False)
    signals.worker_shutting_down.connect(deliverer.stop, weak=False)
    recorder = Recorder(settings, count, deliverer.wake)
    signals.task_postrun.connect(recorder.task_ended, weak=False, dispatch_uid="iris-webhooks-record")
    return deliverer
