"""Build the worker's Celery app: load and warm the champion before the worker takes any task, then follow it;
with SHADOW_SAMPLE > 0, follow the challenger too and shadow a share of the answered messages with it."""

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
from worker import message_guard, watchdog, webhooks
from worker.fastpaths import strategy as fast_strategy
from worker.metrics import WorkerMetrics
from worker.model import ModelLoadError, Registry, ServedModel
from worker.poller import ModelPoller
from worker.shadow import AgreementStore, Shadow, ShadowQueue
from worker.swap import ModelSwapper
from worker.tasks import register_tasks

_swapper: ModelSwapper | None = None
_poller: ModelPoller | None = None
_challenger: ModelSwapper | None = None  # only with SHADOW_SAMPLE > 0
_shadow: Shadow | None = None


def served_model() -> ServedModel:
    """Return the model serving now: one read of one reference, so whoever calls it once per batch gets one version."""
    model = _swapper.current if _swapper is not None else None
    if model is None:
        raise ModelLoadError("the model is not loaded in this process")
    return model


def challenger_model() -> ServedModel | None:
    """Return the challenger loaded now, or None."""
    return _challenger.current if _challenger is not None else None


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
    if settings.shadow_sample > 0:
        _load_challenger(registry)


def _load_challenger(registry: Registry) -> None:
    """Load the challenger if its alias is set; a refusal is logged and counted, and the champion serves as ever."""
    global _challenger
    settings = get_settings()
    alias = settings.challenger_alias
    _challenger = ModelSwapper(lambda: registry.resolve_alias(alias), registry.load, role="challenger")
    _challenger.check()
    model = _challenger.current
    held = f"version {model.version}" if model is not None else f"no version (@{alias} unset or refused)"
    print(f"iris worker: shadowing {settings.shadow_sample:g} of messages with the challenger: {held}",
          file=sys.stderr, flush=True)


def _check_models(force: bool) -> None:
    """Check the champion's alias, then the challenger's (the poller's and the reload command's one check)."""
    if _swapper is not None:
        _swapper.check(force)
    if _challenger is not None:
        _challenger.check(force)


def _consume_rows(sender: str, instance: Any, **_: Any) -> None:
    """Consume the API's edge batches too, whatever queues ``-Q`` selected (shared.celery_app.rows_queue)."""
    instance.app.amqp.queues.select_add(rows_queue(get_settings()))


def _warm_child(**_: Any) -> None:
    """Run one prediction in each forked pool process so its first task is not the slow one."""
    served_model().warm()
    challenger = challenger_model()
    if challenger is not None:
        challenger.warm()


def _pool_recycler(consumer: Any) -> Callable[[ServedModel | None], None] | None:
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

    def recycle(_: ServedModel | None) -> None:
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
    if _challenger is not None:  # a prefork pool's children shadow with the challenger they were forked with
        _challenger.on_swap = _swapper.on_swap
    _poller = ModelPoller(_check_models, get_settings().model_poll_seconds)
    _poller.start()


def _stop_polling(**_: Any) -> None:
    if _poller is not None:
        _poller.stop()


def _info() -> dict[str, Any]:
    if _swapper is None:
        return {}
    polling = _poller.info() if _poller is not None else {}
    settings = get_settings()
    info = {**_swapper.info(), **polling, "model_alias": settings.iris_model_alias}
    if _challenger is not None and _shadow is not None:
        info["challenger"] = {**_challenger.info(), "model_alias": settings.challenger_alias,
                              "shadow": _shadow.info()}
    return info


@inspect_command(name=names.MODEL_INFO_COMMAND)
def iris_model_info(state: Any) -> dict[str, Any]:
    """Answer readiness probes with the model this worker serves (and the challenger) and what its swaps did."""
    return _info()


@control_command(name=names.RELOAD_MODEL_COMMAND)
def iris_reload_model(state: Any) -> dict[str, Any]:
    """Make the poller check the alias now; answer at once, with the request's number, never waiting for it."""
    if _poller is None:
        return {"error": "this worker is not polling yet"}
    return {"ok": "model check requested", "ticket": _poller.request(), **_info()}


def _install_shadow(app: Celery) -> Shadow:
    """Shadow sampled messages with the challenger after each task has answered (worker/shadow.py)."""
    global _shadow
    settings = get_settings()
    # The results Redis, which every broker setup has, holds the hashes make promote-challenger reads.
    store = AgreementStore(lambda: app.backend.client, settings)
    _shadow = Shadow(served_model, challenger_model, settings.shadow_sample, ShadowQueue(settings.shadow_queue_rows),
                     store)
    signals.task_postrun.connect(_shadow.after_task, weak=False)
    signals.worker_shutting_down.connect(_shadow.stop, weak=False)
    return _shadow


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
    shadow = _install_shadow(app) if settings.shadow_sample > 0 else None
    model = shadow.served if shadow is not None else served_model
    if settings.metrics:
        metrics = WorkerMetrics(settings, lambda: _swapper, desk.counts, lambda: _challenger, shadow)
        register_tasks(app, model, metrics.tasks, strategy)
        signals.worker_init.connect(metrics.serve, weak=False)  # after the model loads: WORKER_METRICS_PORT
        signals.worker_shutdown.connect(metrics.stop, weak=False)
        webhooks.install(app, settings, metrics.tasks.webhook)
    else:
        register_tasks(app, model, strategy=strategy)
        webhooks.install(app, settings)
    signals.worker_process_init.connect(_warm_child, weak=False)
    signals.worker_ready.connect(_start_polling, weak=False)
    signals.worker_shutting_down.connect(_stop_polling, weak=False)
    watchdog.install(app, settings)
    return app
