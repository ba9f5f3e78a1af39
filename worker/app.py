"""Build the worker's Celery app: load and warm the champion before the worker takes any task, then follow it."""

import sys
from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from celery.worker.control import control_command, inspect_command
from kombu.exceptions import KombuError

from shared import tasks as names
from shared.celery_app import create_celery, rows_queue
from shared.redact import redact, redact_url
from shared.settings import get_settings
from worker import message_guard, watchdog
from worker.fastpaths import strategy as fast_strategy
from worker.metrics import WorkerMetrics
from worker.model import ModelLoadError, Registry, ServedModel
from worker.poller import ModelPoller
from worker.swap import ModelSwapper
from worker.tasks import register_tasks

_swapper: ModelSwapper | None = None
_poller: ModelPoller | None = None


def served_model() -> ServedModel:
    """Return the model serving now: one read of one reference, so whoever calls it once per batch gets one version."""
    model = _swapper.current if _swapper is not None else None
    if model is None:
        raise ModelLoadError("the model is not loaded in this process")
    return model


def _load_model(**_: Any) -> None:
    """Load the champion once in the main process; forked pool processes inherit it."""
    global _swapper
    if _swapper is not None:
        return
    settings = get_settings()
    try:
        registry = Registry(settings)
        swapper = ModelSwapper(registry.resolve, registry.load)
        model = swapper.start()
    except ModelLoadError as exc:
        print(f"iris worker: {redact(str(exc))}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(f"iris worker: serving {settings.iris_model_name} version {model.version} (run {model.run_id}) from "
          f"{redact_url(settings.mlflow_tracking_uri)}; checking {settings.model_uri} every "
          f"{settings.model_poll_seconds:g} s", file=sys.stderr, flush=True)
    _swapper = swapper


def _consume_rows(sender: str, instance: Any, **_: Any) -> None:
    """Consume the API's edge batches too, whatever queues ``-Q`` selected (shared.celery_app.rows_queue)."""
    instance.app.amqp.queues.select_add(rows_queue(get_settings()))


def _warm_child(**_: Any) -> None:
    """Run one prediction in each forked pool process so its first task is not the slow one."""
    served_model().warm()


def _pool_recycler(consumer: Any) -> Callable[[ServedModel], None] | None:
    """Return how a prefork pool's children get a swapped-in model, or None when the pool shares this process.

    The children hold the model they were forked with. Celery's documented ``pool_restart`` command, sent to
    this worker alone, makes each child exit after its current task and forks a replacement that inherits
    the new model; a job sent to a child that exits is given to another. It runs on the consumer's thread,
    where the pool may be touched; solo and threads pools read the new reference at once. When the broker does
    not take the command, it raises ConnectionError, and the swapper sends it again at its next check.
    """
    from celery.concurrency.prefork import TaskPool

    if not isinstance(consumer.pool, TaskPool):
        return None
    app, hostname = consumer.app, consumer.hostname
    # The broker's errors as Celery's consumer knows them, and kombu's OperationalError that its retries end with.
    broker_errors = (KombuError, *consumer.connection_errors, *consumer.channel_errors)

    def recycle(_: ServedModel) -> None:
        try:
            app.control.pool_restart(destination=[hostname], reply=False)
        except broker_errors as exc:
            raise ConnectionError(f"the broker did not take pool_restart: {type(exc).__name__}: {exc}") from exc

    return recycle


def _start_polling(sender: Any, **_: Any) -> None:
    """Once the consumer is ready, check the alias every MODEL_POLL_SECONDS in a thread of this process."""
    global _poller
    if _swapper is None or _poller is not None:
        return
    _swapper.on_swap = _pool_recycler(sender)
    _poller = ModelPoller(_swapper.check, get_settings().model_poll_seconds)
    _poller.start()


def _stop_polling(**_: Any) -> None:
    if _poller is not None:
        _poller.stop()


def _info() -> dict[str, Any]:
    if _swapper is None:
        return {}
    polling = _poller.info() if _poller is not None else {}
    return {**_swapper.info(), **polling, "model_alias": get_settings().iris_model_alias}


@inspect_command(name=names.MODEL_INFO_COMMAND)
def iris_model_info(state: Any) -> dict[str, Any]:
    """Answer readiness probes with the model this worker serves and what its swaps did."""
    return _info()


@control_command(name=names.RELOAD_MODEL_COMMAND)
def iris_reload_model(state: Any) -> dict[str, Any]:
    """Make the poller check the alias now; answer at once, with the request's number, never waiting for it."""
    if _poller is None:
        return {"error": "this worker is not polling yet"}
    return {"ok": "model check requested", "ticket": _poller.request(), **_info()}


def create_worker_app() -> Celery:
    """Return the Celery app with the iris tasks and the model-loading hooks."""
    settings = get_settings()
    app = create_celery(settings)
    app.conf.worker_pool = settings.worker_pool
    if settings.worker_concurrency:
        app.conf.worker_concurrency = settings.worker_concurrency
    # Lets a prefork pool's children be replaced after a model swap (_pool_recycler); unused by solo.
    app.conf.worker_pool_restarts = True
    signals.worker_init.connect(_load_model, weak=False)
    signals.celeryd_after_setup.connect(_consume_rows, weak=False)
    # Rate limits are per task and none is set; Celery would still look one up for every message.
    app.conf.worker_disable_rate_limits = True
    strategy = fast_strategy.STRATEGY if settings.fast_paths else None
    # Every message passes the guard before a task's code runs: a malformed one is logged, counted and dropped.
    desk = message_guard.install(app, settings)
    if settings.metrics:
        metrics = WorkerMetrics(settings, lambda: _swapper, desk.counts)
        register_tasks(app, served_model, metrics.tasks, strategy)
        signals.worker_init.connect(metrics.serve, weak=False)  # after the model loads: WORKER_METRICS_PORT
        signals.worker_shutdown.connect(metrics.stop, weak=False)
    else:
        register_tasks(app, served_model, strategy=strategy)
    signals.worker_process_init.connect(_warm_child, weak=False)
    signals.worker_ready.connect(_start_polling, weak=False)
    signals.worker_shutting_down.connect(_stop_polling, weak=False)
    watchdog.install(app, settings)
    return app
