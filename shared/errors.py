"""Exceptions that cross the queue: Celery rebuilds them by name on the caller's side."""


class PayloadValidationError(ValueError):
    """A task payload failed validation; the message names the field."""
