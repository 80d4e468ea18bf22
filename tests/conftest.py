"""Shared fixtures: a CLI runner in a subprocess (the real console script path) and temp roots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PRISM_LAB_WANDB"] = env.get("PRISM_LAB_WANDB_TESTS", "disabled")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prism_lab.cli", *args], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=cwd or REPO)


@pytest.fixture
def repo() -> Path:
    return REPO


#: One CPU thread per stage process: thread counts change low-order bits, so every run of the smoke grid
#: that a slow test compares with another uses the same count (and --workers 2 then fills 2 cores).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """The smoke grid run once per test run (every real stage, W&B offline), also under pytest-xdist, shared by
    the slow tests that read it or compare another run of the same grid with it (tests/e2e/test_smoke_*.py:
    the Ray executor, CPU load, a study that reuses its runs, sharded trainers). Tests that add runs work on a
    copy (``copy_root``)."""
    def build(d: Path) -> None:
        res = run_cli("sweep", "run", "experiments/smoke.yaml", "--root", str(d / "root"), "--wandb", "offline", "-q",
                      "--workers", "2", env=cli_env(PRISM_LAB_WANDB="offline", **ONE_THREAD), timeout=1800)
        assert res.returncode == 0, res.stderr[-3000:]

    return built_once(tmp_path_factory, "smoke", build) / "root"


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory ``name`` of this test run, made by ``build(directory)`` once per run, also under
    pytest-xdist: the first worker that asks builds it in the run's temp root (every worker sees it) while the
    others wait on a file lock; a build that failed is redone by the next one that asks."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/popen-gwK -> pytest-N
    d = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not (d / ".built").is_file():
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            build(d)
            (d / ".built").write_text("ok\n")
    return d


def copy_root(root: Path, dst: Path) -> Path:
    """A private copy of a finished root (its ledger and run directories; artifact paths are relative)."""
    shutil.copytree(root, dst)
    return dst


#: The test files with the most work, in the order pytest-xdist hands them to its workers (``--dist loadfile
#: --no-loadscope-reorder`` in pyproject.toml: a file's tests go to one worker, so its module and session fixtures
#: are built once, and files go out in collection order): the longest first, so that none of them starts near the
#: end and holds the whole run up. The smoke files wait for one worker's smoke run (``smoke_root``), then run
#: side by side; the paper-cpu grid (tests/e2e/test_paper_cpu.py) needs no fixture and runs beside that smoke run.
LONG_FIRST = (
    "tests/e2e/test_smoke_grid.py",
    "tests/trainers/test_distributed.py",
    "tests/e2e/test_paper_cpu.py",
    "tests/e2e/test_smoke_ray.py",
    "tests/harness/test_ray_executor.py",
    "tests/e2e/test_smoke_tune.py",
    "tests/hostile/test_bad_data.py",
    "tests/tune/test_tune.py",
    "tests/harness/test_executor.py",
    "tests/hostile/test_preflight.py",
    "tests/hostile/test_cli_errors.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """LONG_FIRST's files first, in its order; the others after them, as collected (a stable sort)."""
    order = {path: i for i, path in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: order.get(item.nodeid.split("::")[0], len(order)))
