"""What ran where: git commit, package versions, host. Written into every run.json."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

PACKAGES = ("prism-lab", "torch", "transformers", "accelerate", "safetensors", "tokenizers", "pydantic",
            "optuna", "wandb", "pandas", "pillow", "math-verify", "trl", "vllm", "flash-attn", "ms-vlmeval",
            "lm_eval", "ray")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@cache
def git_commit(start: str | None = None) -> str | None:
    """HEAD of the prism-lab source checkout (with `-dirty` when it has local changes), or None."""
    here = Path(start or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def host_info() -> dict[str, str]:
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
            "machine": platform.machine()}
