"""Shared fixtures: a CLI runner in a subprocess (the real console script path) and temp roots."""

from __future__ import annotations

import os
import subprocess
import sys
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
