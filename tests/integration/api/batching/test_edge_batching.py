"""Edge batching under real concurrency: every request gets its own answer and its own task id."""

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.datasets import load_iris

from shared.schemas import FEATURES
from tests.helpers import WorkerProcess, api_server, load_champion, make_settings


@pytest.fixture
def api_url(stack_env: dict[str, str], worker: WorkerProcess) -> Iterator[str]:
    """The API as gunicorn runs it (two processes, threads), on a free port."""
    with api_server(stack_env, BATCH_MAX_WAIT_MS="5") as url:
        yield url


def post(url: str, body: dict[str, float]) -> tuple[int, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def test_2000_concurrent_distinct_requests_each_get_their_own_correct_answer(
    api_url: str, stack_env: dict[str, str]
) -> None:
    base = load_iris().data
    rng = np.random.default_rng(7)
    # 2,000 distinct flowers: the Iris data, jittered so that no two rows are the same.
    rows = np.round(base[rng.integers(0, len(base), 2000)] + rng.uniform(0.01, 0.3, (2000, 4)), 6)
    assert len({tuple(r) for r in rows}) == 2000
    bodies = [dict(zip(FEATURES, map(float, r), strict=True)) for r in rows]
    expected = load_champion(make_settings(stack_env)).predict_rows(rows)

    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(lambda b: post(f"{api_url}/v1/classify", b), bodies))

    assert [status for status, _ in answers] == [200] * 2000
    task_ids = [body["data"]["task_id"] for _, body in answers]
    assert len(set(task_ids)) == 2000
    for (_, body), want in zip(answers, expected, strict=True):
        got = body["data"]
        assert got["pred_label"] == want["pred_label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-12)
    # Each row's result is stored under its own id, so any of them can be polled afterwards.
    for index in (0, 999, 1999):
        with urllib.request.urlopen(f"{api_url}/v1/tasks/{task_ids[index]}", timeout=10) as resp:
            polled = json.loads(resp.read())["data"]
        assert polled["status"] == "SUCCESS"
        assert polled["result"]["probabilities"] == pytest.approx(expected[index]["probabilities"], abs=1e-12)
