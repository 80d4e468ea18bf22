"""Shared pieces of the hostile-input suite (issue 17).

Every probe acts as a user would: it writes a bad input into a temporary directory, runs the real
command line (``python -m prism_lab.cli ...`` in a subprocess) and checks what the user sees: exit
code 2, exactly one non-empty line on stderr naming the file and the field, no traceback, and the
ledger and run directories unchanged. Probes use only the command line and file layouts (grid
files, dataset files, checkpoint directories, the root directory), never prism_lab internals, so
they survive moves inside the package.

Expensive inputs are made once per session: a tiny synthetic dataset (``prism-lab data synth``) and
a tiny SFT checkpoint (``prism-lab sweep run --stages base,sft`` on a one-step grid).
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, built_once, cli_env

#: Rows of the tiny synthetic dataset every probe copies.
SYNTH = {"n_sft_public": 8, "n_teacher": 4, "n_caption": 4, "n_instruct": 4, "n_rl": 4, "n_warmup": 4, "n_bench": 4,
         "include_system_prompt": False}

#: A smoke-sized grid with one SFT step: what every probe grid extends.
BASE_GRID = {
    "extends": "smoke.yaml",
    "name": "hostile",
    "data": {"synth": dict(SYNTH)},
    "stages": {"base": {"vision_steps": 1, "caption_steps": 1, "max_steps": 1, "batch_size": 4, "save_every": 1},
               "sft": {"max_steps": 1, "batch_size": 4, "save_every": 1}},
}

#: The same grid reading the session's synthetic files as local data (paths relative to the grid).
LOCAL_DATA = {
    "source": "local",
    "local": {
        "sft": ["data/sft_public.json"],
        "rl": "data/rl_train.parquet",
        "warmup": "data/warmup_pairs.jsonl",
        "bench_dir": "data/bench",
        "image_root": "data",
    },
}


def cli(*args: str, cwd: Path | None = None, timeout: float = 120, mem_gb: float | None = None,
        **env: str) -> subprocess.CompletedProcess:
    """Run ``prism-lab ARGS`` in a subprocess. ``mem_gb`` caps its address space (probes whose
    unfixed behaviour is to allocate without bound)."""
    def limit() -> None:  # pragma: no cover - runs in the child
        if mem_gb is not None:
            cap = int(mem_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run([sys.executable, "-m", "prism_lab.cli", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(**env), timeout=timeout, cwd=cwd or REPO,
                          preexec_fn=limit if mem_gb is not None else None)


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one non-empty stderr line containing every needle, no traceback; returns the line."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    shown = f"rc={res.returncode}\nstderr:\n{res.stderr[-3000:]}\nstdout:\n{res.stdout[-1000:]}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, shown
    assert res.returncode == 2, shown
    assert len(lines) == 1, shown
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in the error line\n{shown}"
    return lines[0]


def snapshot(path: Path) -> Any:
    """Contents of a file or directory tree (sha256 per file), None when absent. SQLite's shared-memory
    file and an empty write-ahead log are left out: they carry no data."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_dir():
            out[rel + "/"] = "dir"
        elif p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0):
            continue
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_grid(path: Path, spec: dict | str) -> Path:
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass
class Session:
    """What the session fixture made once: grid files, tiny synthetic data, a tiny SFT checkpoint."""

    dir: Path
    data: Path  # output of `prism-lab data synth`
    checkpoint: Path  # an SFT run's model/ directory
    root: Path  # the root that made the checkpoint (a ledger with sweep `hostile`)


@pytest.fixture(scope="session")
def session(tmp_path_factory) -> Session:
    """Built once per test run, also under pytest-xdist: the first worker that needs it builds it in the run's
    shared temp directory while the others wait on a file lock, then every worker reads it (tests copy what
    they change)."""
    d = built_once(tmp_path_factory, "hostile-session", _build_session)
    models = sorted((d / "root" / "runs" / "sft").glob("*/model"))
    return Session(dir=d, data=d / "data", checkpoint=models[0], root=d / "root")


def _build_session(d: Path) -> None:
    for name in ("smoke.yaml", "toy.yaml"):
        shutil.copy(REPO / "experiments" / name, d / name)
    write_grid(d / "base.yaml", BASE_GRID)
    write_grid(d / "synth.yaml", SYNTH)
    res = cli("data", "synth", "--out", d / "data", "--config", d / "synth.yaml", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    root = d / "root"
    res = cli("sweep", "run", d / "base.yaml", "--root", root, "--stages", "base,sft", "-q", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    models = sorted((root / "runs" / "sft").glob("*/model"))
    assert len(models) == 1 and (models[0] / "model.safetensors").is_file(), models


@dataclass
class Workspace:
    """A private copy of the grid files and the data; ``root`` is where runs would go (absent)."""

    dir: Path
    data: Path
    root: Path

    def grid(self, filename: str = "probe.yaml", base: str = "base.yaml", **fields: Any) -> Path:
        """A grid that extends ``base`` with ``fields`` (nested dicts merge, as `extends:` does)."""
        return write_grid(self.dir / filename, {"extends": base, **fields})

    def local_grid(self, filename: str = "probe.yaml", **fields: Any) -> Path:
        """A grid reading this workspace's data files as `source: local` data."""
        data = {**LOCAL_DATA, **fields.pop("data", {})}
        stages = {"base": {"datasets": ["public"], "vision_steps": 0, "caption_steps": 0}, **fields.pop("stages", {})}
        return self.grid(filename, data=data, stages=stages, **fields)

    def plan(self, grid: Path, *args: str, cwd: Path | None = None, **kw: Any) -> subprocess.CompletedProcess:
        return cli("sweep", "plan", grid, "--root", self.root, *args, cwd=cwd or self.dir, **kw)

    def plan_keys(self, grid: Path, cwd: Path | None = None) -> dict[str, list[str]]:
        """kind -> sorted run keys of the grid's plan."""
        res = self.plan(grid, "--format", "json", cwd=cwd)
        assert res.returncode == 0, res.stderr[-2000:]
        import json

        out: dict[str, list[str]] = {}
        for run in json.loads(res.stdout):
            out.setdefault(run["kind"], []).append(run["key"])
        return {k: sorted(v) for k, v in out.items()}

    def run(self, grid: Path, *args: str, cwd: Path | None = None, **kw: Any) -> subprocess.CompletedProcess:
        return cli("sweep", "run", grid, "--root", self.root, "-q", *args, cwd=cwd or self.dir, **kw)


@pytest.fixture
def ws(session: Session, tmp_path: Path) -> Workspace:
    for name in ("smoke.yaml", "toy.yaml", "base.yaml", "synth.yaml"):
        shutil.copy(session.dir / name, tmp_path / name)
    shutil.copytree(session.data, tmp_path / "data")
    return Workspace(dir=tmp_path, data=tmp_path / "data", root=tmp_path / "root")
