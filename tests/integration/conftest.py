"""Integration fixtures: the real Flask app wired to the test Redis and a real worker."""

import pytest
from flask.testing import FlaskClient

from api import create_app
from tests.helpers import WorkerProcess, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(stack_env: dict[str, str], worker: WorkerProcess) -> FlaskClient:
    """A test client of the real app, with a live worker on queue ``iris``."""
    return create_app(make_settings(stack_env)).test_client()
