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


def planner_config(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The run's config as the planner reads it: the plan's fields, every default it leaves out (fields
    added later are dumped only when set) and the resolved actor settings (token budgets, DAPO's
    generation batch multiplier)."""
    from prism_lab.harness.stage_kinds import STAGE_KINDS

    out = dict(raw)
    try:
        cfg = STAGE_KINDS.get(kind).config_model().model_validate(raw)
    except Exception:  # noqa: BLE001 - a plugin kind or config the planner does not know: the raw fields
        return out
    for name in ("batch_size", "max_length", "prompts_per_step", "n", "max_prompt_length", "max_new_tokens",
                 "micro_batch_size", "rollout_engine", "rollout_batch_size", "disc_micro_batch", "precision"):
        if hasattr(cfg, name):
            out[name] = getattr(cfg, name)
    actor = None
    if kind == "rl":
        from prism_lab.config.algorithms import resolve_algorithm

        actor = resolve_algorithm(cfg.algorithm, cfg.algorithm_overrides)
        fg = actor.filter_groups
        out["gen_batch_multiplier"] = fg.gen_batch_multiplier if fg.enabled else 1.0
    elif kind == "align":
        actor = cfg.actor()
        out["micro_batch_size"] = cfg.actor_micro_batch
    if actor is not None:
        out["update_token_budget"] = actor.max_tokens_per_micro_batch
        out["log_prob_token_budget"] = actor.log_prob_token_budget
    return out


def largest_terms(est: mem.MemoryEstimate, top: int = 3) -> str:
    """The ``top`` biggest components of an estimate, ``name GB`` each (the table's last column)."""
    biggest = sorted(((v, k) for k, v in est.components.items() if v > 0), reverse=True)[:top]
    return ", ".join(f"{k.replace('discriminator/', 'disc/')} {v / mem.GB:.1f}" for v, k in biggest)


def host_fits(est: mem.MemoryEstimate, resources: dict[str, Any]) -> bool | None:
    """Whether the node's host memory (``resources.host_memory_gb``) holds every rank's share; None when
    the resources do not say it (a CPU run's host memory is its device: checked there)."""
    if not resources.get("host_memory_gb") or not resources.get("gpus"):
        return None
    return est.host_node <= float(resources["host_memory_gb"]) * mem.GB * mem.DEFAULT_MARGIN


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
        est = mem.estimate(run.kind, planner_config(run.kind, run.config), shapes, on_gpu=on_gpu, device_bytes=cap)
        host_ok = host_fits(est, res)
        fits = None if cap is None else mem.fits(est, cap)
        out.append({"key": key, "kind": run.kind, "label": run.label, "resources": res, "estimate": est,
                    "device_bytes": cap, "device": what, "host_fits": host_ok,
                    "fits": fits if host_ok is None or fits is False else host_ok,
                    "params": {role: s["params"] for role, s in shapes.items()}})
    return out


def check_fit(plan, keys: list[str], gpus: list | None = None) -> None:
    """ConfigError (one line) for the first run that cannot fit the devices it will get. Runs of tiny
    presets with default resources are not sized (no torch import for CPU grids)."""
    from prism_lab.models.presets import PRESETS

    tiny = {n for n in PRESETS.names() if PRESETS.get(n).family == "tiny"}
    todo = [k for k in keys if mem.needs_check(plan, k, tiny)]
    for rec in estimate_runs(plan, todo, gpus):
        if rec["host_fits"] is False:
            raise ConfigError(f"stage run {rec['label']}: estimated host memory {rec['estimate'].host_node / mem.GB:.1f} "
                              f"GB per node at {rec['estimate'].world_size} process(es) > "
                              f"{rec['resources']['host_memory_gb'] * mem.DEFAULT_MARGIN:.1f} GB usable of "
                              f"resources.host_memory_gb {rec['resources']['host_memory_gb']:g} (every rank loads its "
                              "models in fp32 before sharding); use fewer processes per node or a larger node")
        if rec["fits"] is False:
            raise ConfigError(mem.describe(rec["label"], rec["estimate"], rec["device_bytes"])
                              + "; use more processes, gradient_checkpointing, offload or a smaller batch")
