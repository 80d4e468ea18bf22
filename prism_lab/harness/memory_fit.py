"""Memory per device of a plan's training runs: `sweep plan --resources` and the fit check of the
pre-flight (harness/preflight.py) that `sweep run` and `tune` share.

The arithmetic is ``prism_lab.harness.memory`` (no torch); the model shapes come from
``prism_lab.models.footprint`` (meta device, imported only here, only when asked).
"""

from __future__ import annotations

from typing import Any

from prism_lab.errors import ConfigError, PrismError
from prism_lab.harness import memory as mem


def _shape(spec: mem.ModelSpec, cache: dict) -> dict[str, Any]:
    from prism_lab.models.footprint import discriminator_shape, model_shape

    if spec not in cache:
        if spec.discriminator is None:
            cache[spec] = model_shape(spec.ref, tiny_vocab=spec.tiny_vocab).to_dict()
        else:
            experts, top_k, kind = spec.discriminator
            cache[spec] = discriminator_shape(spec.ref, num_experts=experts, top_k=top_k, kind=kind,
                                              tiny_vocab=spec.tiny_vocab).to_dict()
    return cache[spec]


def _field(plan, ref: str) -> tuple | None:
    """The grid field that names the model ``ref``: a `models` entry or a ``discriminator.base``."""
    from prism_lab.harness.inputs import discriminator_bases

    grid = plan.grid
    hits = [("models", size) for size, r in grid.spec.models.items() if r == ref]
    hits += [where for where, r in discriminator_bases(grid) if r == ref]
    return hits[0] if hits else None


def _located_shape(plan, spec: mem.ModelSpec, cache: dict) -> dict[str, Any]:
    """:func:`_shape`; a model that cannot be read (its config.json) is one line naming the grid field too."""
    try:
        return _shape(spec, cache)
    except PrismError as exc:
        where = _field(plan, spec.ref)
        if where is None:
            raise
        raise plan.grid.error(where, " ".join(str(exc).split())) from None


def device_memory(resources: dict[str, Any], gpus: list | None) -> tuple[float | None, str]:
    """(bytes of one device, what it is): ``resources.memory_gb``, else the smallest GPU of the pool for a
    GPU run, else host memory shared by the run's processes."""
    from prism_lab.harness.devices import host_memory_bytes

    if resources.get("memory_gb"):
        return float(resources["memory_gb"]) * mem.GB, "resources.memory_gb"
    if resources.get("gpus"):
        sizes = [g.memory_bytes for g in (gpus or []) if g.memory_bytes]
        return (min(sizes), "smallest GPU") if sizes else (None, "unknown GPU")
    host = host_memory_bytes()
    return (mem.host_share(host, resources.get("processes", 1)) if host else None), "host memory / processes"


def estimate_runs(plan, keys: list[str], gpus: list | None = None) -> list[dict[str, Any]]:
    """One record per training run of ``keys``: label, resources, the estimate and the device it is checked on."""
    cache: dict = {}
    out = []
    for key in keys:
        run = plan.runs[key]
        specs = mem.model_specs(plan, key)
        if not specs:
            continue
        res = run.config.get("resources") or {}
        cap, what = device_memory(res, gpus)
        on_gpu = bool(res.get("gpus"))
        shapes = {role: _located_shape(plan, spec, cache) for role, spec in specs.items()}
        est = mem.estimate(run.kind, run.config, shapes, on_gpu=on_gpu, device_bytes=cap)
        out.append({"key": key, "kind": run.kind, "label": run.label, "resources": res, "estimate": est,
                    "device_bytes": cap, "device": what, "fits": None if cap is None else mem.fits(est, cap),
                    "params": {role: s["params"] for role, s in shapes.items()}})
    return out


def check_fit(plan, keys: list[str], gpus: list | None = None) -> None:
    """ConfigError (one line) for the first run that cannot fit the devices it will get. Runs of tiny
    presets with default resources are not sized (no torch import for CPU grids)."""
    from prism_lab.models.presets import PRESETS

    tiny = {n for n in PRESETS.names() if PRESETS.get(n).family == "tiny"}
    todo = [k for k in keys if mem.needs_check(plan, k, tiny)]
    for rec in estimate_runs(plan, todo, gpus):
        if rec["fits"] is False:
            raise ConfigError(mem.describe(rec["label"], rec["estimate"], rec["device_bytes"])
                              + "; use more processes, gradient_checkpointing, offload or a smaller batch")
