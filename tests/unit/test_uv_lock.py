"""uv.lock and its installers agree: what each image installs, and with which uv."""

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

PROJECT = "iris-queue-serving"
MODEL_LIBRARIES = {"scikit-learn", "pandas", "numpy", "scipy", "mlflow", "mlflow-skinny", "skops"}


def load_lock() -> dict[str, Any]:
    """Read uv.lock."""
    with (ROOT / "uv.lock").open("rb") as fh:
        return tomllib.load(fh)


def locked_closure(lock: dict[str, Any], extras: list[str]) -> set[str]:
    """Return every package name the project's core dependencies plus ``extras`` pull in, markers ignored."""
    packages: dict[str, list[dict[str, Any]]] = {}
    for package in lock["package"]:
        packages.setdefault(package["name"], []).append(package)
    # (name, extra) pairs still to expand; extra None stands for a package's own dependencies.
    todo: list[tuple[str, str | None]] = [(PROJECT, None), *((PROJECT, extra) for extra in extras)]
    seen: set[tuple[str, str | None]] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for package in packages[name]:  # a name locked twice (per Python version) counts both versions
            deps = package.get("dependencies", []) if extra is None else package.get(
                "optional-dependencies", {}).get(extra)
            assert deps is not None or name != PROJECT, f"uv.lock has no extra {extra!r}: run make lock"
            for dep in deps or []:
                todo.append((dep["name"], None))
                todo.extend((dep["name"], e) for e in dep.get("extra", []))
    return {name for name, _ in seen} - {PROJECT}


def uv_sync_extras(dockerfile: Path, build_args: dict[str, str]) -> list[str]:
    """Return the extras a Dockerfile's ``uv sync`` installs, with its ARGs set to ``build_args``."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    run = next(line for line in text.splitlines() if line.startswith("RUN") and "uv sync" in line)
    if "${EXTRAS}" in run:  # Dockerfile.worker splits a comma-separated ARG into --extra flags
        return [e for e in re.split(r"[,\s]+", build_args["EXTRAS"]) if e]
    words = shlex.split(run)
    return [words[i + 1] for i, word in enumerate(words) if word == "--extra"]


def test_api_image_installs_no_model_library() -> None:
    extras = uv_sync_extras(ROOT / "Dockerfile.api", {})
    assert extras == ["api", "tracing"]
    closure = locked_closure(load_lock(), extras)
    assert {"flask", "granian", "celery", "kombu", "redis"} <= closure
    assert not closure & MODEL_LIBRARIES


def test_worker_image_extras_come_from_the_comma_separated_build_arg() -> None:
    worker = ROOT / "Dockerfile.worker"
    assert re.search(r"^ARG EXTRAS=worker,tracing$", worker.read_text(), re.MULTILINE)
    assert uv_sync_extras(worker, {"EXTRAS": "worker, flower"}) == ["worker", "flower"]
    lock = load_lock()
    assert {"scikit-learn", "mlflow-skinny"} <= locked_closure(lock, ["worker"])
    assert "mlflow" not in locked_closure(lock, ["worker"]), "the worker needs only mlflow-skinny"
    assert not locked_closure(lock, ["flower"]) & MODEL_LIBRARIES


def test_lock_closure_rejects_an_extra_the_lock_lacks() -> None:
    with pytest.raises(AssertionError, match="no extra 'nonesuch'"):
        locked_closure(load_lock(), ["nonesuch"])


def test_images_and_scripts_use_the_same_uv() -> None:
    pinned = re.search(r"^UV_VERSION=(\S+)$", (ROOT / "scripts/lib.sh").read_text(), re.MULTILINE)
    assert pinned, "scripts/lib.sh sets UV_VERSION"
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        images = re.findall(r"ghcr\.io/astral-sh/uv:(\S+) ", (ROOT / name).read_text())
        assert images == [pinned[1]], f"{name} copies uv {images}, scripts/lib.sh pins {pinned[1]}"


def test_lock_is_taken_from_pypi_alone() -> None:
    sources = {str(p["source"]) for p in load_lock()["package"] if p["name"] != PROJECT}
    assert sources == {"{'registry': 'https://pypi.org/simple'}"}
