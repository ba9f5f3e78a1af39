"""docs/observability.md names every metric the code exports, and its PromQL uses only those."""

import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from api.observability.metrics import ApiMetrics, StateCollector
from tests.unit.api.observability.test_metrics import fake_services
from worker.metrics import RejectionCollector, ShadowCollector, SwapCollector, TaskMetrics
from worker.shadow import Shadow, ShadowQueue
from worker.swap import ModelSwapper

DOCS = Path(__file__).resolve().parents[3] / "docs"
# Sample suffixes Prometheus adds to a family's name.
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def page(name: str) -> str:
    """Return the text of ``docs/<name>``."""
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """Return a page's ``## title`` section, up to the next ``## `` heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def exported() -> set[str]:
    """Return the name of every family the API and a worker export, as a scrape shows it."""
    registry = CollectorRegistry()
    api = ApiMetrics(multiprocess=False)
    api.registry.register(StateCollector(fake_services(3, {"w@h": {"model_name": "m", "model_version": "1"}})))
    TaskMetrics(registry)
    model = SimpleNamespace(name="m", version="1")
    swapper = ModelSwapper(lambda: "1", lambda version: model)  # type: ignore[arg-type,return-value]
    swapper.start()
    challenger = ModelSwapper(lambda: "2", lambda version: model, role="challenger")  # type: ignore[arg-type,return-value]
    challenger.check()
    registry.register(SwapCollector(lambda: swapper, lambda: challenger))
    registry.register(ShadowCollector(Shadow(lambda: model, lambda: None, 1.0, ShadowQueue(1))))  # type: ignore[arg-type,return-value]
    registry.register(RejectionCollector({"not_json": 1}))
    names = set()
    for source in (api.registry, registry):
        for family in source.collect():
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_the_metrics_table_lists_exactly_the_metrics_the_code_exports() -> None:
    metrics = section(page("observability.md"), "Metrics (Prometheus)")
    table = set(re.findall(r"^\| `(iris_\w+)` \|", metrics, re.M))

    assert table == exported()


def test_every_metric_in_the_promql_examples_is_exported() -> None:
    promql = "\n".join(re.findall(r"```promql\n(.*?)```", page("observability.md"), re.S))
    used = set(re.findall(r"\biris_\w+", promql))
    families = exported()

    assert used
    unknown = {
        name
        for name in used
        if name not in families
        and not any(
            name.endswith(suffix) and name[: -len(suffix)] in {f.removesuffix("_total") for f in families}
            for suffix in SUFFIXES
        )
    }
    assert unknown == set()
    # The two the issue asks for: a p99 from the latency histogram and the queue depth.
    assert "histogram_quantile(0.99" in promql and "iris_request_duration_seconds_bucket" in promql
    assert "iris_queue_depth" in promql


def test_the_page_shows_how_to_open_flower_and_the_mlflow_ui_with_targets_that_exist() -> None:
    text = page("observability.md")
    makefile = (DOCS.parent / "Makefile").read_text(encoding="utf-8")

    for title, target in (("Flower", "flower"), ("MLflow UI", "mlflow-ui")):
        assert f"make {target}" in section(text, title)
        assert re.search(rf"^{target}:", makefile, re.M)


def test_the_lifecycle_page_walks_train_gate_promote_swap_rollback_with_its_commands() -> None:
    text = section(page("model-lifecycle.md"), "Model lifecycle: train → gate → promote → live swap → rollback")

    for step in ("**Train.**", "**Gate.**", "**Promote.**", "**Live swap.**", "**Rollback.**"):
        assert step in text
    for command in ("make train", "make reload", "make rollback"):
        assert command in text
