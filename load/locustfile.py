"""Load test of the Iris API: sync classify, async submit-and-poll, and batch users.

    locust -f load/locustfile.py -H http://127.0.0.1:9191                    # web UI on :8089
    locust -f load/locustfile.py -H http://127.0.0.1:9191 --headless -u 32 -r 8 -t 60s
    scripts/load.sh                                                         # headless with CSV/HTML/PNG

The host always comes from -H (or the UI). User classes can be picked by name on the command line
(SyncClassifyUser, AsyncClassifyUser, BatchClassifyUser). Every response is checked: the envelope's shape,
message == "success", a known pred_label, probabilities that add up, a batch as long as its request, and for
unmistakable setosa flowers, the setosa label.

Environment knobs: LOAD_MAX_WAIT (seconds between a user's requests, default 0.1), LOAD_BATCH_SIZE (rows per
batch request, default 20), LOAD_POLL_TIMEOUT (seconds an async task may take, default 15), API_KEY (sent as
X-API-Key, for a stack started with API_KEYS, such as docker-compose's).
"""

import json
import os
import random
import time
from typing import Any

from locust import FastHttpUser, between, events, task

LABELS = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")
ENVELOPE_KEYS = {"message", "data", "error", "version"}
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# Mean and standard deviation (cm) of each measurement per species, from the Iris data set.
SPECIES = {
    "Iris-setosa": ((5.01, 0.35), (3.43, 0.38), (1.46, 0.17), (0.25, 0.11)),
    "Iris-versicolor": ((5.94, 0.52), (2.77, 0.31), (4.26, 0.47), (1.33, 0.20)),
    "Iris-virginica": ((6.59, 0.64), (2.97, 0.32), (5.55, 0.55), (2.03, 0.27)),
}
MAX_WAIT = float(os.environ.get("LOAD_MAX_WAIT", "0.1"))
BATCH_SIZE = int(os.environ.get("LOAD_BATCH_SIZE", "20"))
POLL_TIMEOUT = float(os.environ.get("LOAD_POLL_TIMEOUT", "15"))
DONE = {"SUCCESS", "FAILURE", "REVOKED"}
API_KEY = os.environ.get("API_KEY", "")


def random_flower() -> dict[str, float]:
    """Draw one realistic flower: a random species, each measurement normal around its mean, always valid."""
    params = SPECIES[random.choice(LABELS)]
    # Clipped to a plausible, strictly positive range; one decimal like the original measurements.
    return {name: round(min(max(random.gauss(mean, sd), 0.1), 10.0), 1)
            for name, (mean, sd) in zip(FEATURES, params, strict=True)}


def expected_label(flower: dict[str, float]) -> str | None:
    """Return the label any sane model gives, for flowers far from every decision boundary; else None."""
    # Textbook setosa (short, narrow petals and a short, wide sepal): the trained champion gives these setosa
    # with probability > 0.9 everywhere in the box. Flowers elsewhere are only checked for a valid answer.
    if (flower["petal_length"] <= 1.7 and flower["petal_width"] <= 0.4
            and flower["sepal_length"] <= 5.5 and flower["sepal_width"] >= 3.2):
        return "Iris-setosa"
    return None


def prediction_problem(data: Any, flower: dict[str, float] | None = None) -> str | None:
    """Describe what is wrong with one prediction, or return None when it is valid."""
    if not isinstance(data, dict):
        return f"prediction is not an object: {data!r:.200}"
    label = data.get("pred_label")
    if label not in LABELS:
        return f"unknown pred_label {label!r}"
    confidence = data.get("pred_confidence")
    if not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
        return f"pred_confidence {confidence!r} is not in [0, 1]"
    probabilities = data.get("probabilities")
    if not isinstance(probabilities, dict) or set(probabilities) != set(LABELS):
        return f"probabilities {probabilities!r:.200} do not cover the labels"
    if abs(sum(probabilities.values()) - 1.0) > 1e-6:
        return "probabilities do not add up to 1"
    expected = expected_label(flower) if flower else None
    if expected is not None and label != expected:
        return f"{flower} classified as {label}, expected {expected}"
    return None


def envelope_problem(response: Any, status: int) -> tuple[Any, str | None]:
    """Check the status code and the seed's envelope; return (data, problem)."""
    try:
        body = response.json()
    except Exception:
        return None, f"HTTP {response.status_code}: body is not JSON: {(response.text or '')[:200]!r}"
    if not isinstance(body, dict) or set(body) != ENVELOPE_KEYS:
        return None, f"HTTP {response.status_code}: not an envelope: {body!r:.200}"
    if response.status_code != status or body["message"] != "success" or body["error"] is not None:
        error = body.get("error") or {}
        return None, (f"HTTP {response.status_code} (expected {status}), message {body['message']!r}: "
                      f"{error.get('raised')}: {error.get('message')}")
    return body["data"], None


class _IrisUser(FastHttpUser):
    abstract = True
    wait_time = between(0.0, MAX_WAIT)
    default_headers = {"X-API-Key": API_KEY} if API_KEY else None
    # Requests queue behind the workers under load: allow more than the API's own sync timeout.
    network_timeout = 30.0
    connection_timeout = 5.0


class SyncClassifyUser(_IrisUser):
    """POST /v1/classify and wait for the answer in the same request."""

    weight = 6

    @task
    def classify(self) -> None:
        flower = random_flower()
        with self.client.post("/v1/classify", json=flower, name="/v1/classify", catch_response=True) as resp:
            data, problem = envelope_problem(resp, 200)
            problem = problem or prediction_problem(data, flower)
            if problem:
                resp.failure(problem)
            else:
                resp.success()


class AsyncClassifyUser(_IrisUser):
    """POST /v1/classify/async (202), then poll GET /v1/tasks/<id> until the task is done."""

    weight = 2

    @task
    def classify_async(self) -> None:
        flower = random_flower()
        with self.client.post("/v1/classify/async", json=flower, name="/v1/classify/async",
                              catch_response=True) as resp:
            data, problem = envelope_problem(resp, 202)
            if problem is None and not (isinstance(data, dict) and data.get("task_id") and data.get("status_url")):
                problem = f"no task_id/status_url in {data!r:.200}"
            if problem is None and not resp.headers.get("Location"):
                problem = "202 without a Location header"
            if problem:
                resp.failure(problem)
                return
            resp.success()
        status_url, task_id = data["status_url"], data["task_id"]

        delay, deadline = 0.02, time.monotonic() + POLL_TIMEOUT
        while True:
            time.sleep(delay)  # gevent-patched: yields to the other users
            with self.client.get(status_url, name="/v1/tasks/[id]", catch_response=True) as poll:
                task_data, problem = envelope_problem(poll, 200)
                if problem is None and (not isinstance(task_data, dict) or task_data.get("task_id") != task_id):
                    problem = f"poll answered for another task: {task_data!r:.200}"
                state = task_data.get("status") if problem is None else None
                if problem is None and state in DONE:
                    problem = (prediction_problem(task_data.get("result"), flower) if state == "SUCCESS"
                               else f"task ended {state}: {task_data.get('error')}")
                if problem is None and state not in DONE and time.monotonic() > deadline:
                    problem = f"task still {state} after {POLL_TIMEOUT:.0f}s"
                if problem:
                    poll.failure(problem)
                    return
                poll.success()
            if state in DONE:
                return
            delay = min(delay * 2, 0.25)


class BatchClassifyUser(_IrisUser):
    """POST /v1/classify/batch with LOAD_BATCH_SIZE rows and check one answer per row, in order."""

    weight = 1

    @task
    def classify_batch(self) -> None:
        flowers = [random_flower() for _ in range(BATCH_SIZE)]
        with self.client.post("/v1/classify/batch", json={"instances": flowers}, name="/v1/classify/batch",
                              catch_response=True) as resp:
            data, problem = envelope_problem(resp, 200)
            if problem is None and not isinstance(data, list):
                problem = f"batch data is not a list: {data!r:.200}"
            if problem is None and len(data) != len(flowers):
                problem = f"{len(data)} answers for {len(flowers)} rows"
            if problem is None:
                problem = next(filter(None, (prediction_problem(d, f) for d, f in zip(data, flowers, strict=True))),
                               None)
            if problem:
                resp.failure(problem)
            else:
                resp.success()


@events.test_stop.add_listener
def _write_summary(environment: Any, **_: Any) -> None:
    """Write the run's exact totals beside the CSV files (PREFIX_summary.json) for load/plot_locust.py.

    Locust rewrites PREFIX_stats.csv once a second, so at exit it can lag the final totals by a second.
    """
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    total = environment.stats.total
    if not prefix or not total.num_requests:
        return
    summary = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "requests_per_second": total.total_rps,
        **{f"p{p}": total.get_response_time_percentile(p / 100) for p in (50, 95, 99)},
    }
    with open(f"{prefix}_summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
