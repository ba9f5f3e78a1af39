"""Build the worker's Celery app: load and warm the champion before the worker takes any task."""

import sys
from typing import Any

from celery import Celery, signals
from celery.worker.control import inspect_command

from shared import tasks as names
from shared.celery_app import create_celery
from shared.settings import get_settings
from worker import watchdog
from worker.model import ModelLoadError, ServedModel, load_served_model
from worker.tasks import register_tasks

_served: ServedModel | None = None


def served_model() -> ServedModel:
    """Return this process's model; it is loaded before the worker consumes, so never None here."""
    if _served is None:
        raise ModelLoadError("the model is not loaded in this process")
    return _served


def _load_model(**_: Any) -> None:
    """Load the champion once in the main process; forked pool processes inherit it."""
    global _served
    if _served is not None:
        return
    try:
        _served = load_served_model(get_settings())
    except ModelLoadError as exc:
        print(f"iris worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _warm_child(**_: Any) -> None:
    """Run one prediction in each forked pool process so its first task is not the slow one."""
    served_model().warm()


@inspect_command(name=names.MODEL_INFO_COMMAND)
def iris_model_info(state: Any) -> dict[str, Any]:
    """Answer readiness probes with the model this worker serves."""
    return served_model().info()


def create_worker_app() -> Celery:
    """Return the Celery app with the iris tasks and the model-loading hooks."""
    settings = get_settings()
    app = create_celery(settings)
    app.conf.worker_pool = settings.worker_pool
    if settings.worker_concurrency:
        app.conf.worker_concurrency = settings.worker_concurrency
    register_tasks(app, served_model)
    signals.worker_init.connect(_load_model, weak=False)
    signals.worker_process_init.connect(_warm_child, weak=False)
    watchdog.install(app, settings)
    return app
