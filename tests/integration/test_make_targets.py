"""Every make target installs what it needs on a fresh copy of the repository, with nothing else there first.

Each target gets its own copy of what a clone holds: the files git tracks plus the untracked files it does not
ignore (``git ls-files -co --exclude-standard``), so work not yet committed is covered too, and nothing ignored
(.venv, .tools, mlruns.db, .run, load/reports) comes along. There ``make <target> INSTALL_ONLY=1`` runs the
target's install step and stops (scripts/lib.sh, install_only); the test then looks in the new .venv for the
packages and programs the target uses, and imports this project's entry points it runs. ``make test`` runs
scripts/test.sh, which has no such mode: its install step, ``ensure_venv`` with the extras test.sh names, is run
as test.sh runs it. The uv that scripts/lib.sh's find_uv picks for this checkout goes first on PATH, so each
install comes from uv's cache (a few seconds each) and none downloads uv again.
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration

WRK_MISSING = "error: wrk is not installed: apt-get install wrk (macOS: brew install wrk)"


@dataclass(frozen=True)
class Needs:
    """What a target's install step must leave in .venv."""

    # Installed (found by importlib, not run): MLflow alone takes 6-7 s to import.
    packages: tuple[str, ...] = ()
    # This project's entry points, imported for real: their import chain must need nothing the extras lack.
    imports: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    wrk: bool = False


# The full MLflow of the training extra is what reads the default sqlite:///mlruns.db: its store needs sqlalchemy.
MODEL = ("mlflow", "sqlalchemy", "sklearn", "skops")
SEED_DESIGN = ("flask", "gunicorn", *MODEL)
TARGETS: dict[str, Needs] = {
    "help": Needs(),
    "up": Needs(packages=("granian", "supervisor", *MODEL), imports=("api", "worker"), programs=("supervisord",)),
    "test": Needs(packages=("pytest", "schemathesis", "selenium", "locust"), programs=("ruff", "mypy", "hadolint")),
    "env": Needs(),
    "lock": Needs(),
    "train": Needs(packages=("matplotlib", *MODEL), imports=("training",)),
    "reload": Needs(packages=MODEL, imports=("shared.reload",)),
    "rollback": Needs(packages=("training.rollback", *MODEL)),
    "promote-challenger": Needs(packages=("training.promote_challenger", "redis", *MODEL)),
    "worker": Needs(packages=MODEL, imports=("worker",), programs=("celery",)),
    "api": Needs(packages=("granian",), imports=("api",)),
    "api-gunicorn": Needs(imports=("api",), programs=("gunicorn",)),
    "flower": Needs(packages=("flower",), programs=("celery",)),
    "mlflow-ui": Needs(packages=MODEL, programs=("mlflow",)),
    "bench": Needs(packages=("matplotlib", *SEED_DESIGN), imports=("worker",), programs=("celery",), wrk=True),
    "side-by-side": Needs(packages=SEED_DESIGN, wrk=True),
    "load": Needs(packages=("locust", "matplotlib", "psutil")),
    "soak": Needs(packages=("locust", "matplotlib", "psutil")),
    "drill-hosts": Needs(packages=("granian", *MODEL), imports=("api", "worker", "load.drill_hosts"),
                         programs=("celery",)),
    "clean": Needs(),
}


def _clean_env(uv_dir: Path | None = None) -> dict[str, str]:
    """This environment, with uv first on PATH, and without what would steer make or uv elsewhere."""
    steering = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VIRTUAL_ENV", "INSTALL_ONLY")
    env = {k: v for k, v in os.environ.items() if k not in steering}
    if uv_dir is not None:
        env["PATH"] = f"{uv_dir}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture(scope="module")
def clone_files() -> list[str]:
    """Return the paths a fresh clone of this working tree would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode()
    # A file deleted but not yet staged is still listed; a clone made after the commit would not have it.
    return [path for path in listed.split("\0") if path and (ROOT / path).is_file()]


@pytest.fixture(scope="module")
def uv_dir() -> Path:
    """Return the folder of the uv that scripts/lib.sh uses for this checkout (installing it if need be)."""
    found = subprocess.run(
        ["bash", "-c", ". scripts/lib.sh && find_uv"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(found).parent


def fresh_copy(files: list[str], into: Path) -> Path:
    """Copy ``files`` from the repository into ``into``, keeping modes (the scripts stay executable)."""
    for path in files:
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
    return into


def missing_in(repo: Path, needs: Needs) -> subprocess.CompletedProcess[str]:
    """Look for ``needs``'s packages and import its modules with the copy's .venv, from the copy's root."""
    code = (
        "import importlib, importlib.util, sys\n"
        "missing = [name for name in sys.argv[1].split() if importlib.util.find_spec(name) is None]\n"
        "for name in sys.argv[2].split():\n"
        "    importlib.import_module(name)\n"
        "sys.exit(f'not installed: {missing}' if missing else 0)\n"
    )
    argv = [str(repo / ".venv" / "bin" / "python"), "-c", code, " ".join(needs.packages), " ".join(needs.imports)]
    return subprocess.run(argv, cwd=repo, capture_output=True, text=True)


def test_every_target_make_help_lists_is_checked_here() -> None:
    listed = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env=_clean_env(),
    ).stdout
    assert re.findall(r"^  make (\S+)", listed, re.M) == list(TARGETS)


def test_make_up_installs_the_extras_scripts_up_sh_runs_with() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^up:.*\n\t(.*)$", makefile, re.M)
    assert recipe is not None
    from_make = re.findall(r"ensure_venv (\S+)", recipe.group(1))
    from_script = re.findall(r"ensure_venv (\S+)", (ROOT / "scripts" / "up.sh").read_text())
    assert from_make == from_script


@pytest.mark.parametrize("target", list(TARGETS))
def test_target_installs_what_it_needs_on_a_fresh_clone_and_runs_nothing_else(
    target: str, clone_files: list[str], uv_dir: Path, tmp_path: Path
) -> None:
    repo = fresh_copy(clone_files, tmp_path / "clone")
    lock = (repo / "uv.lock").read_bytes()
    (repo / ".run").mkdir()  # something `make clean` would remove if it ran
    if target == "test":
        extras = re.findall(r"^ensure_venv (\S+)", (repo / "scripts" / "test.sh").read_text(), re.M)
        assert len(extras) == 1, "scripts/test.sh installs with one ensure_venv line"
        argv = ["bash", "-c", f". scripts/lib.sh && ensure_venv {extras[0]}"]
    else:
        argv = ["make", "--no-print-directory", target, "INSTALL_ONLY=1"]
    # A bound, not a measure: a target that ignored INSTALL_ONLY would otherwise serve forever.
    done = subprocess.run(argv, cwd=repo, env=_clean_env(uv_dir), capture_output=True, text=True, timeout=240)

    needs = TARGETS[target]
    if needs.wrk and shutil.which("wrk") is None:
        # Still installed first: only the system package is missing, and one line names it.
        assert done.returncode != 0
        assert WRK_MISSING in done.stderr.splitlines(), done.stderr
    else:
        assert done.returncode == 0, done.stdout + done.stderr
    for program in needs.programs:
        assert (repo / ".venv" / "bin" / program).is_file(), f"{target}: no .venv/bin/{program}"
    if needs.packages or needs.imports:
        found = missing_in(repo, needs)
        assert found.returncode == 0, f"{target}: {found.stderr}"
    assert (repo / ".run").is_dir(), f"{target} removed .run: it ran past its install step"
    assert not (repo / ".env").exists(), f"{target} wrote .env: it ran past its install step"
    assert (repo / "uv.lock").read_bytes() == lock, f"{target} re-locked: it ran past its install step"
