"""GET /metrics sums every granian process's figures, and a real worker serves its own on WORKER_METRICS_PORT."""

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from api.observability.metrics import ApiMetrics
from tests.helpers import SEED_EXAMPLE, WorkerProcess, api_server

REQUESTS = 40

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def classify(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{url}/v1/classify", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_api_sums_its_processes_figures_and_the_worker_serves_its_own(stack_env: dict[str, str],
                                                                          worker: WorkerProcess,
                                                                          tmp_path: Path) -> None:
    worker_url = f"http://127.0.0.1:{worker.env['WORKER_METRICS_PORT']}"
    before = scrape(worker_url)  # the shared worker has served other tests: compare with what it said before
    multiproc = tmp_path / "prometheus"
    with api_server({**stack_env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}, server="granian",
                    WEB_CONCURRENCY="2") as url:
        with ThreadPoolExecutor(8) as pool:  # a new connection each: both processes take some
            answers = list(pool.map(lambda _: classify(url, SEED_EXAMPLE), range(REQUESTS)))
        assert {status for status, _ in answers} == {200}
        version = answers[0][1]["data"]["model_version"]
        assert classify(url, {**SEED_EXAMPLE, "sepal_length": "x"})[0] == 400

        classify_200 = ("iris_requests_total", (("endpoint", "classify.classify"), ("status", "200")))
        # Each process moves its requests' figures into the shared files once a second (ApiMetrics.flush).
        deadline = time.monotonic() + 10
        while (api := scrape(url)).get(classify_200, 0) < REQUESTS:
            assert time.monotonic() < deadline, api
            time.sleep(0.2)
        time.sleep(ApiMetrics.FLUSH_SECONDS * 1.5)  # the 400 and its duration too
        # Both processes answered some requests, and whichever answers a scrape sums both.
        assert len({f.stem.rsplit("_", 1)[1] for f in multiproc.glob("counter_*.db")}) == 2
        api = scrape(url)
        assert api[classify_200] == REQUESTS
        assert all(scrape(url)[classify_200] == REQUESTS for _ in range(3))
        assert api[("iris_requests_total", (("endpoint", "classify.classify"), ("status", "400")))] == 1
        assert api[("iris_request_duration_seconds_count", (("endpoint", "classify.classify"),))] == REQUESTS + 1
        assert api[("iris_batch_size_sum", ())] == REQUESTS
        batches = api[("iris_batch_size_count", ())]
        assert 1 <= batches <= REQUESTS
        assert api[("iris_queue_depth", ())] >= 0
        assert api[("iris_model_info", (("name", "iris-classifier"), ("role", "champion"), ("version", version)))] == 1

    def grew(after: Samples, name: str) -> float:
        return total(after, name) - total(before, name)

    # The worker counts a task's predictions just after it answers: give it a moment.
    deadline = time.monotonic() + 10
    while grew(figures := scrape(worker_url), "iris_predictions_total") < REQUESTS:
        assert time.monotonic() < deadline, figures
        time.sleep(0.1)
    assert grew(figures, "iris_predictions_total") == REQUESTS
    assert grew(figures, "iris_task_duration_seconds_count") == batches
    assert figures[("iris_model_loads_total", ())] >= 1
    assert figures[("iris_model_info", (("name", "iris-classifier"), ("role", "champion"), ("version", version)))] == 1
