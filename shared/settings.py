"""Typed settings read from the environment, shared by the API, the workers and training."""

import math
from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @property
    def issued_prefix(self) -> str:
        """Return the prefix of the keys marking ids the API issued: async tasks, and sync rows that timed out."""
        return f"{self.key_prefix}task:"

    @property
    def row_result_hold_seconds(self) -> int:
        """Return how long a sync row's result is kept when its request did not time out: while it may wait."""
        return math.ceil(self.sync_timeout_seconds) + 5

    @property
    def rows_queue(self) -> str:
        """Return the queue the API's edge batches go to (shared.celery_app.rows_queue); workers consume it too."""
        return f"{self.iris_queue}.rows"

    @property
    def model_uri(self) -> str:
        """Return the MLflow URI of the model the workers serve."""
        return f"models:/{self.iris_model_name}@{self.iris_model_alias}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process."""
    return Settings()
