"""GET /livez (the process answers) and /readyz (Redis and a worker with a loaded model answer)."""

from flask import Blueprint, Response

from api.extension import services
from api.web.envelope import success

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez() -> Response:
    """Answer while the process is up."""
    return success({"status": "alive"})


@bp.get("/readyz")
def readyz() -> Response:
    """Answer 200 only when Redis and at least one worker with a loaded model answer."""
    return success(services().readiness.check())
