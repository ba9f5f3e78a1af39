"""observe_many: the samples it leaves equal one observe per value, and the prometheus-client internals it uses."""

from importlib.metadata import version

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from api.observability.observe_many import observe_many

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Below, on and above each bound, and past the last one (+Inf).
VALUES = [0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 0.0005]


def exported(fill: str) -> bytes:
    registry = CollectorRegistry()
    child = Histogram("t_seconds", "test", ["endpoint"], buckets=BUCKETS, registry=registry).labels("e")
    if fill == "each":
        for value in VALUES:
            child.observe(value)
    else:
        observe_many(child, VALUES, fast=fill == "fast")
    lines = generate_latest(registry).splitlines()
    return b"\n".join(line for line in lines if not line.startswith(b"t_seconds_created"))


def test_prometheus_client_is_below_1_and_keeps_the_attributes_the_bypass_uses() -> None:
    assert int(version("prometheus-client").split(".")[0]) == 0, "re-check the bypass, then update the pin"
    child = Histogram("t2_seconds", "test", ["e"], buckets=BUCKETS, registry=CollectorRegistry()).labels("x")
    assert list(child._upper_bounds) == [*BUCKETS, float("inf")]
    assert len(child._buckets) == len(child._upper_bounds) and hasattr(child._sum, "inc")


@pytest.mark.parametrize("fill", ["fast", "documented"])
def test_the_exported_samples_equal_one_observe_per_value(fill: str) -> None:
    assert exported(fill) == exported("each")
