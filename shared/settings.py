"""Typed settings read from the environment, shared by the API, the workers and training."""

import math
from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import webhooks


class Settings(BaseSettings):
    """Every knob of the service; each field is read from the environment variable of the same name."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    celery_result_backend: str = "redis://127.0.0.1:6379/1"
    mlflow_tracking_uri: str = "sqlite:///mlruns.db"
    iris_model_name: str = "iris-classifier"
    iris_model_alias: str = "champion"
    # Workers check every this many seconds whether the alias names another version, and swap it in live
    # (worker/swap.py); `make reload` makes them check at once.
    model_poll_seconds: float = Field(15.0, gt=0)
    # Shadowing (docs/model-lifecycle.md, "Shadowing a challenger"): with SHADOW_SAMPLE > 0 each worker also loads
    # the version CHALLENGER_ALIAS names (when set) and, after answering with the champion, predicts that share of
    # task messages with it too, off the request path, counting whether the two agree. 0: off, nothing loaded.
    challenger_alias: str = "challenger"
    shadow_sample: float = Field(0.0, ge=0, le=1)
    # Rows waiting for the challenger in each worker process at most; a message that would pass it is not shadowed
    # (counted in iris_shadow_dropped_rows_total), so shadowing never grows memory or holds up a task.
    shadow_queue_rows: int = Field(5000, ge=1)
    # The agreement each worker adds to Redis, one hash per (champion, challenger) pair, expires this long after
    # its last update (make promote-challenger reads it).
    shadow_stats_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    iris_queue: str = "iris"
    port: int = Field(9191, ge=1, le=65535)
    api_host: str = "0.0.0.0"
    web_concurrency: int = Field(2, ge=1)
    web_threads: int = Field(16, ge=1)
    # CPython forces a GIL hand-off every 5 ms by default; the API's threads block on every request anyway.
    gil_switch_interval_ms: float = Field(50.0, gt=0)
    tag: str = "0.0.0"
    loglevel: str = "INFO"
    sync_timeout_seconds: float = Field(10.0, gt=0)
    result_expires_seconds: int = Field(3600, ge=60)
    # An Idempotency-Key sent with POST /v1/classify/async or /batch names its task this long: a retry with the
    # same key and body answers that task and queues nothing (api/idempotency.py). At most a week: each key
    # holds a small record in the results Redis until then.
    idempotency_ttl_seconds: int = Field(86400, ge=60, le=7 * 86400)
    # Sync rows are answered in-band; their stored copies only serve 504 poll URLs. A row whose request timed
    # out keeps its result this long; any other only as long as its request could still be waiting
    # (row_result_hold_seconds), or at thousands of rows a second Redis would hold gigabytes of answers.
    row_result_expires_seconds: int = Field(600, ge=60)
    # Redis gives a task back to the queue when its worker has not acknowledged it this long after delivery,
    # within 5 s more (docs/reliability.md). Tasks take milliseconds; 120 s is twice task_time_limit (enforced
    # by the prefork pool only), and brings a dead worker's task back in about 2 minutes.
    visibility_timeout_seconds: int = Field(120, ge=10)
    # Admission: new work answers 503 + Retry-After once this many task messages wait in the two queues together,
    # or once they take QUEUE_MAX_MB of Redis's memory (a message holds 1 to BATCH_MAX_ROWS rows, so the count
    # alone would let 1,000-row tables fill gigabytes; docs/security.md, "Bounds"). QUEUE_MAX_MB=0: no byte bound.
    queue_max_length: int = Field(10_000, ge=0)
    queue_max_mb: float = Field(64.0, ge=0)
    batch_max_size: int = Field(64, ge=1)
    batch_max_wait_ms: float = Field(10.0, ge=0)
    batch_max_in_flight: int = Field(1, ge=1)
    batch_max_rows: int = Field(1000, ge=1)
    key_prefix: str = "iris:"
    # A batch predicts in microseconds, so one process with no pool IPC is the lean default; scale out with
    # more processes. threads and prefork measured no better on 2 cores (docs/deployment.md, "Scaling out").
    worker_pool: str = "solo"
    worker_concurrency: int | None = Field(None, ge=1)
    # The worker's watchdog (worker/watchdog.py) sends a probe task to the worker's own queue when it has
    # received nothing for this long, and exits the worker non-zero when a probe it published is not received
    # within WORKER_WATCHDOG_TIMEOUT_SECONDS: a stalled consumer is replaced by its supervisor.
    worker_watchdog_interval_seconds: float = Field(1.0, gt=0)
    worker_watchdog_timeout_seconds: float = Field(6.0, gt=0)
    # kombu PINGs its pub/sub connection and drops a BRPOP whose reply is overdue every this many seconds,
    # which heals a half-open connection without a restart (kombu's default is 25).
    broker_health_check_interval_seconds: int = Field(2, ge=1)
    # Touched by the watchdog each time the consumer is seen alive; a container health check reads its age.
    worker_heartbeat_file: str | None = None
    # Comma-separated keys; when set, the classify, task and scoring routes need one (Authorization: Bearer <key>
    # or X-API-Key). Unset: open. Set but blank or malformed: the API refuses to start (api/web/auth.py).
    api_keys: SecretStr | None = None
    # A file holding the keys (comma- or newline-separated), as Docker and Kubernetes mount secrets; not both.
    api_keys_file: str | None = None
    # Put GET /metrics, /docs and /openapi.json behind the key too; on with no key set, the API refuses to start.
    protect_metrics_and_docs: bool = False
    # One JSON line per API request (method, path, status, duration_ms, request_id); off for throughput.
    access_log: bool = False
    # The longest the API waits on any one Redis call before it answers 503; nothing retries a timeout. The
    # slowest path (a publish, then a reconnect's two pings) waits three times this: keep it under 5 s.
    api_redis_timeout_seconds: float = Field(1.0, gt=0, le=1.5)
    # The fast paths reach past Celery's, kombu's or redis-py's documented APIs, each in one module named for
    # what it bypasses, pinned to the versions its contract test ran on (docs/design.md, "Fast paths"). FAST_PATHS=0
    # switches every one of them to the documented API: the way out when a library upgrade breaks one.
    fast_paths: bool = True
    # Prometheus metrics: the API's GET /metrics (summed over its server's worker processes) and each worker's
    # own port. METRICS=false adds nothing to the request path or to the tasks, to measure what the metrics cost.
    metrics: bool = True
    # The port each Celery worker serves its own /metrics on (0: none). `make up` gives worker N base + N - 1.
    worker_metrics_port: int = Field(9192, ge=0, le=65535)
    # Webhooks (docs/api.md, "Webhooks"): off unless a secret is set. Each delivery is signed with it
    # (X-Iris-Signature: sha256=<HMAC-SHA256 of the body>); it is never logged or served.
    webhook_secret: SecretStr | None = None
    # Comma-separated host names (exact, case-insensitive), IP addresses or networks (CIDR) a Callback-URL may
    # name; loopback and private addresses must be listed too, link-local and metadata ones never pass.
    webhook_allowed_hosts: str = ""
    # Allow http:// callback URLs too (https only by default).
    webhook_allow_http: bool = False
    # Attempts per delivery: the first at once, each next after WEBHOOK_BACKOFF_SECONDS x 2^(n-1) (2, 4, ... 128 s).
    webhook_max_attempts: int = Field(8, ge=1, le=12)
    webhook_backoff_seconds: float = Field(2.0, gt=0, le=60)
    # How long one attempt may take to connect, send and get its status line.
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Deliveries pending at once: the API answers 503 to a new Callback-URL once this many wait.
    webhook_max_pending: int = Field(10_000, ge=1)

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        """Take an empty WEBHOOK_SECRET (compose passes ${WEBHOOK_SECRET:-}) as unset: never sign with ''."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _parse_allowed_hosts(cls, value: str) -> str:
        """Refuse a malformed network in WEBHOOK_ALLOWED_HOSTS at start, not at the first callback."""
        webhooks.parse_allowed(value)
        return value

    @property
    def issued_prefix(self) -> str:
        """Return the prefix of the keys marking ids the API issued: async tasks, and sync rows that timed out."""
        return f"{self.key_prefix}task:"

    @property
    def idempotency_prefix(self) -> str:
        """Return the prefix of the results Redis keys recording which task each Idempotency-Key queued."""
        return f"{self.key_prefix}idempotency:"

    @property
    def row_result_hold_seconds(self) -> int:
        """Return how long a sync row's result is kept when its request did not time out: while it may wait."""
        return math.ceil(self.sync_timeout_seconds) + 5

    @property
    def webhook_record_ttl_seconds(self) -> int:
        """Return how long a delivery record is kept: its whole retry schedule, each attempt's lease, and an hour."""
        schedule = self.webhook_backoff_seconds * (2 ** (self.webhook_max_attempts - 1) - 1)
        return math.ceil(schedule + self.webhook_max_attempts * self.webhook_lease_seconds) + 3600

    @property
    def webhook_lease_seconds(self) -> float:
        """Return how long a worker holds a delivery it sends before another may send it: the attempt's timeout,
        the address lookup's and a margin."""
        return 3 * self.webhook_timeout_seconds + 1

    @property
    def rows_queue(self) -> str:
        """Return the queue the API's edge batches go to (shared.celery_app.rows_queue); workers consume it too."""
        return f"{self.iris_queue}.rows"

    @property
    def model_uri(self) -> str:
        """Return the MLflow URI of the model the workers serve."""
        return f"models:/{self.iris_model_name}@{self.iris_model_alias}"

    def shadow_stats_key(self, champion: str, challenger: str) -> str:
        """Return the Redis hash of the rows a challenger version shadowed against a champion version, and agreed."""
        return f"{self.key_prefix}shadow:{self.iris_model_name}:{champion}:{challenger}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process."""
    return Settings()
