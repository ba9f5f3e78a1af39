"""Fixtures of the protocol tests (/v2 and MLflow's scoring): the API as served, the champion and rows to send."""

from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.datasets import load_iris

from tests.helpers import WorkerProcess, api_server, load_champion, make_settings
from worker.model import ServedModel

# Two rows of each species, so that a label mix-up between rows cannot pass unseen.
PICKS = [0, 25, 50, 75, 100, 125]


@pytest.fixture(scope="module")
def granian_url(stack_env: dict[str, str], worker: WorkerProcess) -> Iterator[str]:
    """The API as ``python -m api`` serves it (granian, one process), on a free port, ready for work."""
    with api_server(stack_env, server="granian", WEB_CONCURRENCY="1") as url:
        yield url


@pytest.fixture(scope="module")
def model(stack_env: dict[str, str]) -> ServedModel:
    """The champion the workers serve, loaded here to say what each answer should be."""
    return load_champion(make_settings(stack_env))


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return load_iris().data[PICKS]
