"""Grid -> cells -> stage runs with content keys. Identical keys are one run (shared across cells).

A content key hashes the stage kind and its code version, the fully resolved stage config, the keys
of its inputs (by role) and a data fingerprint. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from prism_lab.harness.grid import Grid, validate_config
from prism_lab.harness.stage_kinds import STAGE_KINDS


def canonical_json(obj: Any) -> str:
    """Deterministic JSON used for hashing and storage."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _keyed_config(config: dict) -> dict:
    """The config as the key hashes it. A key holds what changes results and nothing else:
    - the planner hints of ``resources`` (``memory_gb``: only the fit check reads it) are hashed at their
      default, so changing a hint never retrains a chain, and a config without a hint keeps its key;
    - a ``resources`` section at its defaults (one CPU process) is left out, so adding the field kept every
      earlier key;
    - any other ``resources`` is part of the key: the world size and dtypes change the numbers, and so
      does ``cpus``, which sets each process's thread count (torch's CPU reductions split by thread: one and
      two threads give different low-order bits after a few AdamW steps; README, "Content keys")."""
    res = config.get("resources")
    if res is None:
        return config
    from prism_lab.config.resources import PLANNER_HINTS, UNKEYED_HINTS, ResourcesConfig

    res = {k: (PLANNER_HINTS[k] if k in PLANNER_HINTS else v) for k, v in res.items() if k not in UNKEYED_HINTS}
    default = {k: v for k, v in ResourcesConfig().model_dump(mode="json").items() if k not in UNKEYED_HINTS}
    if res == default:
        return {k: v for k, v in config.items() if k != "resources"}
    return {**config, "resources": res}


def content_key(kind: str, version: int, config: dict, inputs: dict[str, str], fingerprint: str = "") -> str:
    payload = canonical_json(
        {"kind": kind, "version": version, "config": _keyed_config(config), "inputs": inputs, "data": fingerprint}
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class StageRun:
    key: str
    kind: str
    label: str
    config: dict[str, Any]
    inputs: dict[str, str]
    fingerprint: str = ""
    cells: list[str] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.key[:12]


@dataclass
class Cell:
    id: str
    axes: dict[str, Any]
    runs: dict[str, str] = field(default_factory=dict)  # role -> run key

    def describe(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.axes.items())


@dataclass
class Plan:
    grid: Grid
    cells: list[Cell]
    runs: dict[str, StageRun]  # in topological order (inputs before users)

    def count(self, kind: str) -> int:
        return sum(1 for r in self.runs.values() if r.kind == kind)

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in self.runs}
        for run in self.runs.values():
            for dep in run.inputs.values():
                out.setdefault(dep, []).append(run.key)
        return out


def cell_id(axes: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(axes).encode()).hexdigest()[:10]


class PlanBuilder:
    """Collects stage runs, validating and hashing each distinct config once."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.runs: dict[str, StageRun] = {}
        self._validated: dict[tuple[str, str], dict] = {}
        self.memo: dict[str, Any] = {}  # what a pipeline computes once per plan (e.g. data fingerprints)

    def resolve_config(self, kind: str, raw: dict, where: tuple) -> dict:
        """Validate ``raw`` against the kind's config model; returns the full config with defaults."""
        memo_key = (kind, canonical_json(raw))
        hit = self._validated.get(memo_key)
        if hit is None:
            model = STAGE_KINDS.get(kind).config_model()
            hit = validate_config(self.grid, model, raw, where).model_dump(mode="json")
            self._validated[memo_key] = hit
        return hit

    def add(
        self,
        kind: str,
        raw_config: dict,
        inputs: dict[str, str],
        *,
        label: str,
        cell: Cell,
        role: str,
        fingerprint: str = "",
        where: tuple = (),
    ) -> str:
        spec = STAGE_KINDS.get(kind)
        config = self.resolve_config(kind, raw_config, where or ("stages", kind))
        key = content_key(kind, spec.version, config, inputs, fingerprint)
        run = self.runs.get(key)
        if run is None:
            run = StageRun(key=key, kind=kind, label=label, config=config, inputs=dict(inputs),
                           fingerprint=fingerprint)
            self.runs[key] = run
        if not run.cells or run.cells[-1] != cell.id:
            run.cells.append(cell.id)
        cell.runs[role] = key
        return key


def expand_cells(grid: Grid) -> list[Cell]:
    names = list(grid.spec.axes)
    cells = []
    for values in itertools.product(*(grid.spec.axes[n] for n in names)):
        axes = dict(zip(names, values))
        cells.append(Cell(id=cell_id(axes), axes=axes))
    return cells
