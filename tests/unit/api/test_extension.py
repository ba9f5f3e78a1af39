"""The extension wires the API's Celery client as the settings say, whatever Celery reads from the environment."""

import pytest

from api import create_app
from api.broker.results_backend import PollingRedisBackend
from api.extension import KEY
from shared.settings import Settings

BROKER, BACKEND = "redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1"


@pytest.mark.parametrize("in_environment", [False, True], ids=["settings-only", "env-too"])
def test_the_api_reads_results_with_the_polling_backend(monkeypatch: pytest.MonkeyPatch,
                                                         in_environment: bool) -> None:
    # Deployments set CELERY_RESULT_BACKEND, and Celery's conf.result_backend prefers that variable to
    # anything assigned: the backend must be chosen where the environment cannot override it.
    if in_environment:
        monkeypatch.setenv("CELERY_RESULT_BACKEND", BACKEND)
    else:
        monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    app = create_app(Settings(celery_broker_url=BROKER, celery_result_backend=BACKEND))
    assert isinstance(app.extensions[KEY].celery.backend, PollingRedisBackend)  # builds a client, connects none
