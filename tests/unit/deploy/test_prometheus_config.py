"""deploy/prometheus.yml scrapes what the compose stack serves: the API's port and every worker's metrics port."""

from pathlib import Path
from typing import Any

import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


def _default(field: str) -> Any:
    """Return a setting's default, whatever this machine's environment says."""
    return Settings.model_fields[field].default


def test_prometheus_scrapes_the_api_and_each_worker_replica_on_their_default_ports() -> None:
    jobs = {job["job_name"]: job for job in _load("deploy/prometheus.yml")["scrape_configs"]}
    assert jobs["iris-api"]["static_configs"] == [{"targets": [f"api:{_default('port')}"]}]
    (workers,) = jobs["iris-worker"]["dns_sd_configs"]
    # DNS discovery finds every `--scale worker=N` replica by the service's name.
    assert workers["names"] == ["worker"] and workers["type"] == "A"
    assert workers["port"] == _default("worker_metrics_port")


def test_compose_gives_the_worker_that_port_and_mounts_the_config_into_prometheus() -> None:
    services = _load("docker-compose.yml")["services"]
    port = str(_default("worker_metrics_port"))

    assert services["worker"]["environment"]["WORKER_METRICS_PORT"] == port
    assert services["worker"]["expose"] == [port]
    assert "ports" not in services["worker"]  # a host port would stop `--scale worker=N`
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert services["prometheus"]["profiles"] == ["observability"]
