"""A PRISM grid's inputs on disk: where its paths point, whether its files are sound, and their fingerprint.

One rule for every path a grid names (``data.local.*``, local model directories and a local
``disc_warmup.discriminator.base``, in `stages`, `size_stages` or as an axis): a relative path
is relative to the directory of the grid file that wrote it (an `extends:` parent's paths to the
parent's directory), never to the current directory or to a run's artifact directory. ``resolve_paths``
applies it once, when the grid is loaded, so the plan, the keys and every stage see absolute paths.

``check_inputs`` reads every local dataset and checks every local checkpoint before any stage runs
(`sweep plan` and `sweep run` both call it); each error is one line naming the grid field and the file.
`sweep plan` only warns about official/hub benchmark files and dataset directories not on this machine;
`sweep run` refuses them.
``data_fingerprint`` hashes the contents of everything a `source: local` data run stands for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prism_lab.errors import PrismError
from prism_lab.harness.grid import Grid

#: data.local fields that hold one path, and the one that holds a list.
_LOCAL_ONE = ("rl", "warmup", "heldout", "bench_dir", "image_root")


def _declared_dir(grid: Grid, path: tuple) -> Path:
    for n in range(len(path), -1, -1):
        hit = grid.lines.get(tuple(path[:n]))
        if hit is not None:
            return Path(hit[0]).resolve().parent
    return grid.path.resolve().parent


def _absolute(grid: Grid, ref: str, where: tuple) -> str:
    p = Path(ref).expanduser()
    return str(p if p.is_absolute() else (_declared_dir(grid, where) / p).resolve())


def resolve_paths(grid: Grid) -> None:
    """Make every local path of the grid absolute (see the module doc). Idempotent."""
    spec = grid.spec
    local = spec.data.get("local") if isinstance(spec.data, dict) else None
    if isinstance(local, dict):
        if isinstance(local.get("sft"), list):
            local["sft"] = [_absolute(grid, p, ("data", "local", "sft", i)) if isinstance(p, str) else p
                            for i, p in enumerate(local["sft"])]
        for field in _LOCAL_ONE:
            if isinstance(local.get(field), str) and local[field]:
                local[field] = _absolute(grid, local[field], ("data", "local", field))
    for size, ref in list(spec.models.items()):
        spec.models[size] = _model_path(grid, ref, ("models", size))
    for where, ref in discriminator_bases(grid):
        _set(spec, where, _model_path(grid, ref, where))


def _model_path(grid: Grid, ref: Any, where: tuple) -> Any:
    """``ref`` made absolute when it names a local directory (a path, or a name that exists next to the grid
    file that wrote it); preset names, hub ids and ``from_policy_preset`` are returned as they are."""
    from prism_lab.models.presets import PRESETS

    if not isinstance(ref, str) or not ref or ref in PRESETS or ref == FROM_POLICY:
        return ref
    p = Path(ref).expanduser()
    candidate = p if p.is_absolute() else _declared_dir(grid, where) / p
    return str(candidate.resolve()) if ref.startswith((".", "/", "~")) or candidate.exists() else ref


#: ``discriminator.base`` value that takes the policy's own model (config/align.py).
FROM_POLICY = "from_policy_preset"
_DISC_BASE = ("disc_warmup", "discriminator", "base")


def discriminator_bases(grid: Grid) -> list[tuple[tuple, Any]]:
    """(grid field, value) of every ``disc_warmup.discriminator.base`` the grid sets: in `stages`, in
    `size_stages` and as an axis."""
    spec = grid.spec
    out: list[tuple[tuple, Any]] = []
    sections = [(("stages",), spec.stages)] + [(("size_stages", size), kinds) for size, kinds in spec.size_stages.items()]
    for where, kinds in sections:
        node: Any = kinds
        for part in _DISC_BASE[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and "base" in node:
            out.append(((*where, *_DISC_BASE), node["base"]))
    axis = ".".join(_DISC_BASE)
    out += [(("axes", axis, i), v) for i, v in enumerate(spec.axes.get(axis) or [])]
    return out


def _set(spec: Any, where: tuple, value: Any) -> None:
    node = spec.axes if where[0] == "axes" else getattr(spec, where[0])
    for part in where[1:-1]:
        node = node[part]
    node[where[-1]] = value


#: Benchmark sources whose files come from outside the grid (released VLMEvalKit TSVs, hub task data),
#: not from its data run: `sweep plan` may only warn that one is missing (see :func:`check_inputs`).
_OUTSIDE_SOURCES = ("vlmevalkit", "hf")


def bench_files_and_gaps(grid: Grid, bench_dir: str | None) -> tuple[list[tuple[Path, bool]], list[str]]:
    """(file, is a VLMEvalKit TSV) for each of the grid's benchmarks that reads a file (an lm-eval hub
    task reads none), and one message per missing file of an outside source (an official TSV not yet
    copied to this machine). A missing file of the data run's own benchmarks raises DataError."""
    from prism_lab.errors import DataError
    from prism_lab.eval.benchmarks import load_benchmark
    from prism_lab.eval.run import benchmark_tsv

    found: list[tuple[Path, bool]] = []
    gaps: list[str] = []
    for spec in (load_benchmark(name) for name in grid.spec.benchmarks):
        if not spec.file:
            continue
        try:
            found.append((benchmark_tsv(spec, bench_dir), spec.kind != "lmeval"))
        except DataError as exc:
            if spec.source not in _OUTSIDE_SOURCES:
                raise
            gaps.append(str(exc))
    return found, gaps


def bench_files(grid: Grid, bench_dir: str | None) -> list[tuple[Path, bool]]:
    """:func:`bench_files_and_gaps`, where any missing file raises DataError."""
    from prism_lab.errors import DataError

    found, gaps = bench_files_and_gaps(grid, bench_dir)
    if gaps:
        raise DataError(gaps[0])
    return found


def _bench_dir(local: dict[str, Any]) -> str | None:
    return local.get("bench_dir") or os.environ.get("LMUData") or None


def data_fingerprint(grid: Grid, local: dict[str, Any]) -> str:
    """Fingerprint of every file a `source: local` data run names: the SFT, RL and warm-up files, the
    image root and the grid's benchmark TSVs."""
    from prism_lab.harness.fingerprint import fingerprint_paths

    files = [*(local.get("sft") or []), *(local[k] for k in ("rl", "warmup", "heldout") if local.get(k))]
    # images resolve against image_root, else against each file's own directory: hash what they can be
    roots = [local["image_root"]] if local.get("image_root") else sorted({str(Path(f).parent) for f in files})
    paths: list[str | Path] = [*files, *roots]
    bench_dir = _bench_dir(local)
    if bench_dir:
        from prism_lab.eval.benchmarks import load_benchmark

        specs = [load_benchmark(name) for name in grid.spec.benchmarks]
        paths += [Path(bench_dir) / s.file for s in specs if s.file]
    return fingerprint_paths(paths)


def absent_local_inputs(local: dict[str, Any]) -> dict[str, str]:
    """Grid field (as :func:`prism_lab.data.validate.local_data_checks` names it) -> why it is absent, for
    each `data.local` path whose directory is not on this machine: a file whose parent directory does
    not exist, an ``image_root`` that does not exist. That is data not copied here yet, which `sweep plan`
    reports as a warning; a file missing from a directory that exists stays an error (a typo, a
    deleted file)."""
    out: dict[str, str] = {}
    named = [(f"sft[{i}]", p) for i, p in enumerate(local.get("sft") or [])]
    named += [(f, local[f]) for f in ("heldout", "rl", "warmup") if isinstance(local.get(f), str) and local[f]]
    for field, path in named:
        parent = Path(path).parent
        if not parent.exists():
            out[field] = f"{path}: not on this machine (directory {parent} does not exist)"
    root = local.get("image_root")
    if isinstance(root, str) and root and not Path(root).exists():
        out["image_root"] = f"{root}: not on this machine (the directory does not exist)"
    return out


def _relocated(grid: Grid, where: tuple, exc: PrismError) -> PrismError:
    return grid.error(where, " ".join(str(exc).split()))


def check_inputs(grid: Grid, *, strict_benchmarks: bool = True) -> list[str]:
    """Read every local dataset and check every local checkpoint of the grid (see the module doc).

    Returns warnings, one line each. ``strict_benchmarks`` False (`sweep plan`): a missing official or
    hub benchmark file, and a local dataset whose directory is not on this machine
    (:func:`absent_local_inputs`), are such warnings instead of errors, so that a grid can be planned on a
    machine that has not been given the released files yet; `sweep run` stays strict (its stages could
    not run). The files that are there are still read and checked."""
    from prism_lab.models.refs import classify_model_ref

    spec = grid.spec
    warnings: list[str] = []
    aligned = any(v != "none" for v in spec.axes.get("alignment", []))
    local = spec.data.get("local") if spec.data.get("source") == "local" else None
    if isinstance(local, dict):
        from prism_lab.data.validate import VALIDATION_VERSION, local_data_checks
        from prism_lab.harness.fingerprint import already_checked, mark_checked

        bench_where = ("data", "local", "bench_dir")
        try:
            files, gaps = bench_files_and_gaps(grid, _bench_dir(local))
        except PrismError as exc:
            raise _relocated(grid, bench_where, exc) from None
        if gaps and strict_benchmarks:
            raise _relocated(grid, bench_where, PrismError(gaps[0]))
        warnings += [str(_relocated(grid, bench_where, PrismError(g))) for g in gaps]
        absent = {} if strict_benchmarks else absent_local_inputs(local)
        warnings += [str(_relocated(grid, ("data", "local", *_split(f)), PrismError(m))) for f, m in absent.items()]
        # the same file contents pass the same checks: a large dataset is read once, not at every plan
        tag = f"valid-data:{VALIDATION_VERSION}:{aligned}:{data_fingerprint(grid, local)}"
        if not already_checked(tag):
            for field, check in local_data_checks(local, files, require_teacher=aligned):
                if field in absent:
                    continue
                try:
                    check()
                except PrismError as exc:
                    raise _relocated(grid, ("data", "local", *_split(field)), exc) from None
            if not gaps and not absent:  # a check that skipped missing files is not the full check
                mark_checked(tag)
    local = [(("models", size), ref) for size, ref in spec.models.items() if size in spec.axes.get("size", [])
             and classify_model_ref(ref, base=grid.path.parent).kind == "local"]
    bases = [(where, ref) for where, ref in (discriminator_bases(grid) if aligned else [])
             if ref != FROM_POLICY and (where[0] != "size_stages" or where[1] in spec.axes.get("size", []))]
    for where, ref in bases:
        problem = _base_problem(ref)
        if problem:
            raise grid.error(where, problem)
    local += [(where, ref) for where, ref in bases if classify_model_ref(ref).kind == "local"]
    if local:
        _check_checkpoints(grid, local, dense={where for where, _ in bases})
    return warnings


def _base_problem(ref: Any) -> str:
    """Why ``ref`` cannot be a discriminator base (the stage loads it with ``load_policy``); "" when it can."""
    from prism_lab.models.presets import PRESETS
    from prism_lab.models.refs import classify_model_ref

    if not isinstance(ref, str):
        return f"expected {FROM_POLICY!r}, a local Qwen3-VL checkpoint directory or a hub id, got {ref!r}"
    if ref in PRESETS and PRESETS.get(ref).family == "tiny":
        return (f"{ref!r} is a tiny random-init preset, not a checkpoint: use {FROM_POLICY!r} (the policy's own "
                "model) or a checkpoint directory")
    return classify_model_ref(ref).problem


def _check_checkpoints(grid: Grid, local: list[tuple[tuple, str]], dense: set[tuple]) -> None:
    """The torch-free checks of every local checkpoint first, then the strict weight check of each; the
    fields in ``dense`` (discriminator bases) must name a dense Qwen3-VL, the model upcycling starts from."""
    from prism_lab.models.checkpoint import inspect_checkpoint
    from prism_lab.models.weight_check import verify_weights

    for where, ref in local:
        try:
            cfg = inspect_checkpoint(ref)
        except PrismError as exc:
            raise _relocated(grid, where, exc) from None
        if where in dense and cfg.get("model_type") != "qwen3_vl":
            raise grid.error(where, f"{ref}: model_type: expected a dense Qwen3-VL (qwen3_vl) to upcycle into the "
                                    f"discriminator, got {cfg.get('model_type')!r}")
    seen: set[str] = set()
    for where, ref in local:
        if ref in seen:
            continue
        seen.add(ref)
        try:
            verify_weights(ref)
        except PrismError as exc:
            raise _relocated(grid, where, exc) from None


def _split(field: str) -> tuple:
    name, _, index = field.partition("[")
    return (name, int(index.rstrip("]"))) if index else (name,)
