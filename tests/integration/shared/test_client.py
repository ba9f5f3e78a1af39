"""Other Python services call the workers by task name, with only Celery installed."""

import json
import subprocess
import sys
import textwrap

import pytest
from celery import Celery

from shared import tasks
from shared.celery_app import create_celery
from shared.client import IrisClient
from shared.errors import PayloadValidationError
from tests.helpers import SEED_EXAMPLE, WorkerProcess, make_settings

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def app(stack_env: dict[str, str], worker: WorkerProcess) -> Celery:
    return create_celery(make_settings(stack_env))


def test_send_task_by_name_works_where_sklearn_and_mlflow_cannot_import(
    stack_env: dict[str, str], worker: WorkerProcess
) -> None:
    script = textwrap.dedent(f"""
        import json, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"sklearn", "mlflow", "pandas"}}:
                    raise ImportError(name + " is blocked in this test")

        sys.meta_path.insert(0, Block())
        from celery import Celery

        app = Celery(broker={stack_env["CELERY_BROKER_URL"]!r}, backend={stack_env["CELERY_RESULT_BACKEND"]!r})
        one = app.send_task("iris.classify", args=[{SEED_EXAMPLE!r}], queue="iris").get(timeout=30)
        many = app.send_task("iris.classify_batch", args=[[{SEED_EXAMPLE!r}, {SETOSA!r}]], queue="iris").get(timeout=30)
        try:
            import sklearn  # noqa: F401
            blocked = False
        except ImportError:
            blocked = True
        print(json.dumps({{"one": one, "many": many, "blocked": blocked,
                          "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "mlflow"))}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["blocked"] is True and answer["loaded"] == []
    assert answer["one"]["pred_label"] == "Iris-virginica"
    assert [row["pred_label"] for row in answer["many"]] == ["Iris-virginica", "Iris-setosa"]


def test_reordered_keys_reach_the_model_by_name(app: Celery) -> None:
    reordered = dict(reversed(list(SEED_EXAMPLE.items())))
    first = app.send_task(tasks.CLASSIFY, args=[SEED_EXAMPLE]).get(timeout=30)
    second = app.send_task(tasks.CLASSIFY, args=[reordered]).get(timeout=30)
    assert first["probabilities"] == second["probabilities"]


def test_invalid_payload_fails_the_task_naming_the_field_and_the_worker_lives_on(app: Celery) -> None:
    with pytest.raises(PayloadValidationError, match="petal_width"):
        app.send_task(tasks.CLASSIFY, args=[{**SEED_EXAMPLE, "petal_width": "wide"}]).get(timeout=30)
    with pytest.raises(PayloadValidationError, match=r"instances\.1\.sepal_length"):
        app.send_task(tasks.CLASSIFY_BATCH, args=[[SEED_EXAMPLE, {"oops": 1}]]).get(timeout=30)
    with pytest.raises(PayloadValidationError):
        app.send_task(tasks.CLASSIFY, args=["not an object"]).get(timeout=30)
    assert app.send_task(tasks.CLASSIFY, args=[SEED_EXAMPLE]).get(timeout=30)["pred_label"] == "Iris-virginica"


def test_typed_client_returns_predictions(stack_env: dict[str, str], worker: WorkerProcess) -> None:
    client = IrisClient(settings=make_settings(stack_env))
    assert client.classify(SEED_EXAMPLE).pred_label == "Iris-virginica"
    assert [p.pred_label for p in client.classify_batch([SETOSA, SEED_EXAMPLE])] == ["Iris-setosa", "Iris-virginica"]
