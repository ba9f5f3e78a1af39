"""The API's errors: each carries its HTTP status and its envelope's ``raised`` name (see web/error_handlers.py)."""

from typing import Any

from flask import url_for


class ApiError(Exception):
    """A failure the client can act on; subclasses fix ``status`` and ``raised``."""

    status = 500
    raised = "InternalServerError"

    def __init__(self, message: str, *, data: Any = None, headers: dict[str, str] | None = None,
                 raised: str | None = None, raised_on: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.headers = headers
        self.raised = raised or self.raised
        self.raised_on = raised_on


class ValidationFailed(ApiError):
    """The body does not match the contract; the message names each field, never the input."""

    status, raised = 400, "ValidationError"


class Unauthorized(ApiError):
    """No API key, or a wrong one; it never says which."""

    status, raised = 401, "Unauthorized"

    def __init__(self) -> None:
        super().__init__("missing or wrong API key; send Authorization: Bearer <key> or X-API-Key",
                         headers={"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    """No such task: never issued here, or expired."""

    status, raised = 404, "NotFound"


class PayloadTooLarge(ApiError):
    """More rows than BATCH_MAX_ROWS."""

    status, raised = 413, "PayloadTooLarge"


class TaskFailed(ApiError):
    """A worker took the task and could not classify it."""

    status, raised = 500, "TaskFailed"

    def __init__(self, task_id: str, what: str = "this request") -> None:
        super().__init__(f"the worker could not classify {what}", data={"task_id": task_id})


class Unavailable(ApiError):
    """Nothing was queued and retrying shortly may succeed: a 503 with Retry-After."""

    status, raised = 503, "ServiceUnavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class QueueUnavailable(Unavailable):
    """Redis does not answer."""

    raised = "QueueUnavailable"
    default = "the task queue is unreachable; try again shortly"

    def __init__(self, message: str = default) -> None:
        super().__init__(message)


class QueueFull(Unavailable):
    """QUEUE_MAX_LENGTH tasks wait already, or they fill QUEUE_MAX_MB; or, with no ``depth``, the broker refused the
    task at a bound of its own (RabbitMQ nacks a publish past a max-length policy with overflow reject-publish)."""

    raised = "QueueFull"
    refused = "the broker refused the task: its queue is at the broker's own bound; try again shortly"

    def __init__(self, depth: int | None = None, megabytes: float | None = None) -> None:
        if depth is None:  # the broker said no, and not how much waits: claim no figure
            super().__init__(self.refused)
            return
        held = f"{depth} tasks" if megabytes is None else f"{megabytes:.1f} MB of tasks"
        super().__init__(f"the queue holds {held}; try again shortly")


class NoWorkers(Unavailable):
    """Redis answers, but no worker with a loaded model does."""

    raised = "NoWorkers"

    def __init__(self) -> None:
        super().__init__("no worker with a loaded model answered")


class TimedOut(ApiError):
    """No worker answered within SYNC_TIMEOUT_SECONDS; the task stays queued under ``task_id`` and can be polled."""

    status, raised = 504, "Timeout"

    def __init__(self, task_id: str, seconds: float) -> None:
        super().__init__(f"no worker answered within {seconds:g} s; poll status_url")
        self.task_id = task_id
        location = url_for("tasks.task_status", task_id=task_id)
        self.data = {"task_id": task_id, "status": "PENDING", "status_url": location}
        self.headers = {"Location": location}


class BadIdempotencyKey(ApiError):
    """An Idempotency-Key header that is empty, too long or not printable ASCII."""

    status, raised = 400, "InvalidIdempotencyKey"


class Conflict(ApiError):
    """The request conflicts with the state of what it names: a 409."""

    status, raised = 409, "Conflict"


class IdempotencyKeyInUse(Conflict):
    """The first request with this Idempotency-Key is still being answered; retrying shortly may succeed."""

    raised = "IdempotencyKeyInUse"

    def __init__(self) -> None:
        super().__init__("a request with this Idempotency-Key is still being answered; retry shortly",
                         headers={"Retry-After": "1"})


class TaskNotCancellable(Conflict):
    """The task started or finished already, or was not queued as a task of its own."""

    raised = "TaskNotCancellable"

    def __init__(self, task_id: str, message: str, state: str | None = None) -> None:
        super().__init__(message, data={"task_id": task_id, "status": state})


class IdempotencyKeyReused(ApiError):
    """The Idempotency-Key was sent before with another request: a 422, and nothing queued."""

    status, raised = 422, "IdempotencyKeyReused"

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used with a different request; send a new key for a new request")


class CallbacksFull(Unavailable):
    """WEBHOOK_MAX_PENDING webhook deliveries are pending: a Callback-URL is refused, nothing queued."""

    raised = "CallbacksFull"

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} webhook deliveries are pending; try again shortly, or submit without "
                         f"Callback-URL and poll status_url")
