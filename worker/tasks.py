"""The tasks the workers run: JSON in, JSON out, predictions vectorised per message."""

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import orjson
from celery import Celery, states
from pydantic import ValidationError

from shared import tasks as names
from shared.errors import PayloadValidationError
from shared.schemas import ClassifyPayload, format_validation_error, rows_from_payloads
from shared.settings import get_settings
from worker.fastpaths.store_result import store_many
from worker.metrics import TaskMetrics
from worker.model import Predictor
from worker.revocation import Revocable


def _failed(failure: Exception) -> dict[str, Any]:
    """Return a reply's error part for ``failure``: its type's name and its message."""
    return {"error": {"raised": type(failure).__name__, "message": str(failure)}}


def _rows_or_raise(payloads: list[Any], title: str) -> list[list[float]]:
    """Validate payloads, raising an error that names the field and crosses the queue as JSON."""
    try:
        return rows_from_payloads(payloads)
    except ValidationError as exc:
        raise PayloadValidationError(format_validation_error(exc, title)) from None


def _refuse_over(rows: int, limit: int) -> None:
    """Raise when a message holds more than ``limit`` rows, before the model or the validation sees one."""
    if rows > limit:
        raise PayloadValidationError(f"{rows} rows: a batch takes at most {limit} rows")


def register_tasks(app: Celery, model: Callable[[], Predictor], metrics: TaskMetrics | None = None,
                   strategy: str | None = None) -> None:
    """Register the iris tasks on ``app``; ``model`` returns the model serving now, ``metrics`` counts their runs,
    and ``strategy`` (worker/fastpaths/strategy.py, with FAST_PATHS on) runs the API's internal messages.

    Each task calls ``model()`` once and predicts all its rows with that object: a live swap (worker/swap.py)
    between two calls would otherwise answer one message with two versions.
    """
    settings = get_settings()
    # Larger tables are refused before anything reads a row (worker/message_guard.py refuses larger bodies).
    public_rows = settings.batch_max_rows
    internal_rows = max(settings.batch_max_rows, settings.batch_max_size)
    timer: Callable[[str], Any]
    predicted: Callable[[list[dict[str, Any]]], None]
    if metrics is None:  # METRICS=false, or a caller with no port: nothing counted, nothing spent
        timer, predicted = lambda _task: nullcontext(), lambda _results: None
    else:
        timer, predicted = metrics.timer, metrics.predicted

    # The public tasks can be cancelled before they start (DELETE /v1/tasks/<id>): Revocable checks as it marks
    # them STARTED. The internal ones below are a sync request's, answered in-band or re-sent: no cancel.
    @app.task(name=names.CLASSIFY, throws=(PayloadValidationError,), base=Revocable)
    def classify(payload: dict[str, Any]) -> dict[str, Any]:
        """Classify one flower."""
        with timer(names.CLASSIFY):
            if not isinstance(payload, dict):
                raise PayloadValidationError("payload must be an object with the four measurements")
            try:
                row = ClassifyPayload.model_validate(payload).row()
            except ValidationError as exc:
                raise PayloadValidationError(format_validation_error(exc)) from None
            results = model().predict_rows([row])
            predicted(results)
            return results[0]

    @app.task(name=names.CLASSIFY_BATCH, throws=(PayloadValidationError,), base=Revocable)
    def classify_batch(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Classify many flowers with one prediction, answering in order."""
        with timer(names.CLASSIFY_BATCH):
            if not isinstance(payloads, list) or not payloads:
                raise PayloadValidationError("payloads must be a non-empty list of objects")
            _refuse_over(len(payloads), public_rows)
            results = model().predict_rows(_rows_or_raise(payloads, "BatchPayload"))
            predicted(results)
            return results

    internal: dict[str, Any] = {"ignore_result": True, **({"Strategy": strategy} if strategy else {})}

    @app.task(name=names.CLASSIFY_ROWS, **internal)
    def classify_rows(rows: list[list[float]], task_ids: list[str], reply_to: str | None = None) -> None:
        """Predict rows gathered by an API process and answer each under its own task id."""
        stored: list[Any]
        outcome: dict[str, Any]
        with timer(names.CLASSIFY_ROWS):
            predictions, failure = _predict(rows, len(task_ids))
            if failure is None:
                stored = predictions
                state, outcome = states.SUCCESS, {"results": stored}
            else:
                stored = [failure] * len(task_ids)
                state, outcome = states.FAILURE, _failed(failure)
            _answer(classify_rows.request, task_ids, stored, state, outcome, reply_to,
                    get_settings().row_result_expires_seconds)
            if state == states.SUCCESS:
                predicted(stored)

    @app.task(name=names.CLASSIFY_TABLE, **internal)
    def classify_table(rows: list[list[float]], task_id: str, reply_to: str | None = None) -> None:
        """Predict one batch request's rows, validated by the API, and answer them as one list under ``task_id``."""
        outcome: dict[str, Any]
        with timer(names.CLASSIFY_TABLE):
            predictions, failure = _predict(rows, None)
            results: Any = predictions if failure is None else failure
            state, outcome = (states.SUCCESS, {"results": [results]}) if failure is None else (states.FAILURE,
                                                                                                _failed(failure))
            _answer(classify_table.request, [task_id], [results], state, outcome, reply_to,
                    get_settings().result_expires_seconds)
            if state == states.SUCCESS:
                predicted(results)

    def _predict(rows: list[list[float]], ids: int | None) -> tuple[Any, Exception | None]:
        """Predict an internal task's rows (``ids``: how many task ids they answer, if one each): the predictions
        and None, or None and the failure."""
        try:
            if ids is not None and len(rows) != ids:
                raise PayloadValidationError(f"{len(rows)} rows for {ids} task ids")
            _refuse_over(len(rows), internal_rows)
            return model().predict_rows(rows), None
        except Exception as exc:  # broad: every id waits for an answer; a failure of any type is answered at once
            return None, exc

    def _answer(request: Any, task_ids: list[str], stored: list[Any], state: str, outcome: dict[str, Any],
                reply_to: str | None, expires: int) -> None:
        """Store each id's result and reply to the API process on its channel, in one round trip."""
        reply = (reply_to, orjson.dumps({"ids": task_ids, **outcome})) if reply_to else None
        # The API's headers say how long its request can still wait and where it marks the ids whose wait
        # ended unanswered; a message without them (an older API) keeps every result ``expires`` seconds.
        store_many(app.backend, task_ids, stored, state, reply, expires, fast=get_settings().fast_paths,
                   hold=getattr(request, names.RESULT_HOLD_HEADER, None),
                   marks=getattr(request, names.RESULT_MARKS_HEADER, None))
