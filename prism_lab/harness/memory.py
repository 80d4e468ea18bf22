"""Estimated peak memory per device of one stage run (pure arithmetic; no torch).

Inputs: the run's stage kind and config (as in the plan), its ``resources``, and the shapes of the
models it trains (:class:`prism_lab.models.footprint.ModelShape` as a dict, counted on the meta
device). Output: bytes per device by component, and the peak.

Model (per rank, world size N, FSDP2 fully sharded; see the PyTorch FSDP2 docs and ZeRO, Rajbhandari
et al. 2020, §5 for the per-parameter byte counts):

* sharded state, ``P / N`` parameters each: master weights (``master_dtype``), gradients (same dtype)
  and AdamW's two moments (same dtype). With ``offload`` these live in host memory instead.
* gathered for compute: the root unit (embeddings, LM head, ...) plus two blocks (the one computing
  and the one prefetched) in ``param_dtype``, plus one block's unsharded gradient in ``reduce_dtype``.
  With N = 1 and no dtype change there is no gathered copy.
* activations of one micro-batch of T tokens, per decoder layer and token,
  ``(6 h + 2 q + 2 kv + 4 i) x bytes`` (layer input, norm outputs, q/k/v, attention output, MLP
  gate/up/activation/product); with gradient checkpointing only each layer's input (``h x bytes``) is
  kept, plus one layer's full set while it is recomputed (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", §4, for the method; SDPA/flash attention keep no
  T x T scores). Vision tower: the same for its tokens, ``(8 hv + 2 iv)`` per layer.
* logits: ``T x vocab x (bytes + 4 + 4)`` (the logits, their fp32 copy and the fp32 gradient of the loss).
* generation (rl, align): the HF engine's KV cache for this rank's share of the rollouts,
  ``seqs x (prompt + response) x layers x 2 x kv x bytes``, with the gathered weights.
* align adds the discriminator (its own sharded state, optimizer and activations).

Peak = sharded state on the device + the largest phase (training or generation). It is an estimate
for planning (it ignores the allocator's fragmentation and CUDA context, ~1-2 GB per GPU); the
``margin`` of the fit check covers that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GB = 1e9
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
#: Share of a device the fit check allows the estimate to use (the rest: CUDA context, fragmentation).
DEFAULT_MARGIN = 0.9
#: vLLM's share of a GPU in the rollout engine (prism_lab.rollout.vllm.VLLMEngine's default).
VLLM_GPU_MEMORY_UTILIZATION = 0.6
#: Host memory of one rank process beyond its tensors on CPU: Python with torch, transformers and the
#: trainer imported is ~0.27 GB resident (measured: ru_maxrss after the imports, torch 2.13 CPU); autograd,
#: gloo buffers and the allocator's slack bring it to about 0.5 GB in a run.
PROCESS_RUNTIME_BYTES = 0.5 * GB
#: The torchrun launcher beside the ranks (~0.25 GB resident, measured the same way).
LAUNCHER_BYTES = 0.3 * GB


@dataclass
class MemoryEstimate:
    """Bytes per device of one stage run, by component; ``host`` is what offload moves to host memory."""

    world_size: int
    components: dict[str, float] = field(default_factory=dict)
    host: float = 0.0
    peak: float = 0.0
    notes: list[str] = field(default_factory=list)

    def gb(self, name: str) -> float:
        return self.components.get(name, 0.0) / GB

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "peak_gb": round(self.peak / GB, 2), "host_gb": round(self.host / GB, 2),
                **{f"{k}_gb": round(v / GB, 2) for k, v in self.components.items()}, "notes": list(self.notes)}


@dataclass(frozen=True)
class Precision:
    param: int  # bytes of a gathered (compute) parameter and of activations
    reduce: int
    master: int

    @classmethod
    def of(cls, resources: Mapping[str, Any], stage_precision: str | None, on_gpu: bool) -> Precision:
        pd = resources.get("param_dtype", "auto")
        if pd == "auto":
            pd = "bf16" if (stage_precision == "bf16" or (stage_precision in (None, "auto") and on_gpu)) else "fp32"
        return cls(DTYPE_BYTES[pd], DTYPE_BYTES[resources.get("reduce_dtype", "fp32")],
                   DTYPE_BYTES[resources.get("master_dtype", "fp32")])


def sharded_state_bytes(params: int, world: int, prec: Precision) -> dict[str, float]:
    """Weights, gradients and AdamW moments of ``params`` parameters, sharded over ``world`` ranks."""
    per = params / world
    return {"weights": per * prec.master, "grads": per * prec.master, "optimizer": 2 * per * prec.master}


def gathered_bytes(shape: Mapping[str, Any], world: int, prec: Precision) -> float:
    """Unsharded compute copies FSDP holds at once: root + 2 blocks (+ one block's gradient)."""
    if world == 1 and prec.param == prec.master:
        return 0.0
    return (shape["root_params"] + 2 * shape["block_params"]) * prec.param + shape["block_params"] * prec.reduce


def layer_activation_bytes_per_token(shape: Mapping[str, Any], nbytes: int) -> float:
    h, q, kv, i = shape["hidden"], shape["q_dim"], shape["kv_dim"], shape["intermediate"]
    return (6 * h + 2 * q + 2 * kv + 4 * i) * nbytes


def activation_bytes(shape: Mapping[str, Any], tokens: int, images: int, nbytes: int, checkpointing: bool) -> float:
    """Activations kept for the backward pass of one micro-batch of ``tokens`` text tokens and ``images`` images."""
    per_layer = layer_activation_bytes_per_token(shape, nbytes)
    if checkpointing:
        text = shape["layers"] * tokens * shape["hidden"] * nbytes + tokens * per_layer
    else:
        text = shape["layers"] * tokens * per_layer
    vt = images * shape["image_tokens"]
    v_layer = (8 * shape["vision_hidden"] + 2 * shape["vision_intermediate"]) * nbytes
    if checkpointing:
        vision = shape["vision_layers"] * vt * shape["vision_hidden"] * nbytes + vt * v_layer
    else:
        vision = shape["vision_layers"] * vt * v_layer
    return text + vision


def logits_bytes(shape: Mapping[str, Any], tokens: int, nbytes: int) -> float:
    return tokens * shape["vocab"] * (nbytes + 8)


def kv_cache_bytes(shape: Mapping[str, Any], seqs: int, length: int, nbytes: int) -> float:
    return seqs * length * shape["layers"] * 2 * shape["kv_dim"] * nbytes


def _train_tokens(kind: str, cfg: Mapping[str, Any], world: int) -> tuple[int, int]:
    """(tokens, images) of one rank's micro-batch: the padded upper bound. SFT and warm-up batches are
    global (split over the ranks); the RL micro-batch is per rank."""
    if kind in ("base", "sft"):
        rows = math.ceil(cfg.get("batch_size", 2) / world)
        return rows * cfg.get("max_length", 8192), rows
    if kind == "disc_warmup":
        rows = 2 * math.ceil(cfg.get("batch_size", 4) / world)  # teacher and student of each comparison
        return rows * cfg.get("max_length", 8192), rows
    rows = cfg.get("micro_batch_size", 1)
    length = cfg.get("max_prompt_length", 2048) + cfg.get("max_new_tokens", 8192)
    return rows * length, rows


def _model_part(name: str, shape: Mapping[str, Any], world: int, prec: Precision, offload: bool, tokens: int,
                images: int, checkpointing: bool, est: MemoryEstimate) -> tuple[float, float]:
    """Adds one trained model's components; returns (resident on the device, peak of its training phase)."""
    resident = 0.0
    for k, v in sharded_state_bytes(shape["params"], world, prec).items():
        est.components[f"{name}/{k}"] = 0.0 if offload else v
        if offload:
            est.host += v
        else:
            resident += v
    gathered = gathered_bytes(shape, 1 if (world == 1 and not offload) else max(world, 2), prec)
    act = activation_bytes(shape, tokens, images, prec.param, checkpointing)
    # the policy's loss needs its vocabulary logits; the discriminator's head gives one score per token
    lg = logits_bytes(shape, tokens, prec.param) if name == "policy" else tokens * 4.0
    est.components[f"{name}/gathered"] = gathered
    est.components[f"{name}/activations"] = act
    est.components[f"{name}/logits"] = lg
    return resident, gathered + act + lg


def estimate(kind: str, cfg: Mapping[str, Any], shapes: Mapping[str, Mapping[str, Any]], *,
             on_gpu: bool, device_bytes: float | None = None) -> MemoryEstimate:
    """Peak bytes per device of a ``kind`` run with stage config ``cfg`` (its ``resources`` included).

    ``shapes``: ``{"policy": ModelShape dict}``, plus ``"discriminator"`` for disc_warmup and align
    (disc_warmup trains only the discriminator). With the vLLM engine on a GPU the generation phase is
    vLLM's reservation, ``gpu_memory_utilization x device_bytes`` (0.6, the engine's default), plus its
    bf16 copy of the weights.
    """
    res = cfg.get("resources") or {}
    world = int(res.get("processes", 1))
    prec = Precision.of(res, cfg.get("precision"), on_gpu)
    offload = bool(res.get("offload", False)) and on_gpu
    gc = bool(res.get("gradient_checkpointing", False))
    est = MemoryEstimate(world_size=world)
    tokens, images = _train_tokens(kind, cfg, world)
    trained = ["discriminator"] if kind == "disc_warmup" else ["policy"] + (["discriminator"] if kind == "align" else [])
    resident, phases = 0.0, []
    for name in trained:
        r, p = _model_part(name, shapes[name], world, prec, offload, tokens, images, gc, est)
        resident += r
        phases.append(p)
    train_peak = max(phases)  # the models train one after the other
    gen_peak = 0.0
    if kind in ("rl", "align"):
        pol = shapes["policy"]
        engine = cfg.get("rollout_engine", "hf")
        if on_gpu and engine == "vllm" and device_bytes:
            kv = VLLM_GPU_MEMORY_UTILIZATION * device_bytes
            est.components["generation/vllm"] = kv
            gen_peak = kv + pol["params"] * 2
        else:
            seqs = math.ceil(cfg.get("prompts_per_step", 1) / world) * cfg.get("n", 1)
            length = cfg.get("max_prompt_length", 2048) + cfg.get("max_new_tokens", 8192)
            kv = kv_cache_bytes(pol, seqs, length, prec.param)
            est.components["generation/kv_cache"] = kv
            gen_peak = est.components["policy/gathered"] + kv
    if res.get("offload") and not on_gpu:
        est.notes.append("offload ignored on CPU (host memory is the device)")
    if not on_gpu:  # every rank is a Python process with torch loaded, in the same host memory
        est.components["process/runtime"] = PROCESS_RUNTIME_BYTES
        resident += PROCESS_RUNTIME_BYTES
    est.peak = resident + max(train_peak, gen_peak)
    return est


def host_share(host_bytes: float, processes: int) -> float:
    """Host memory one rank of a CPU run may use: the machine's memory less the torchrun parent (with
    several processes), split over the ranks. ``fits(est, host_share(...))`` is then the check
    ``processes x per-rank peak + parent <= host memory x margin``."""
    processes = max(1, int(processes))
    parent = LAUNCHER_BYTES if processes > 1 else 0.0
    return max(0.0, host_bytes - parent / DEFAULT_MARGIN) / processes


def fits(est: MemoryEstimate, device_bytes: float, margin: float = DEFAULT_MARGIN) -> bool:
    return est.peak <= device_bytes * margin


# ------------------------------------------------------------------------------------------ plans
TRAINING_KINDS = ("base", "sft", "disc_warmup", "align", "rl")


@dataclass(frozen=True)
class ModelSpec:
    """Which model a stage run trains, as the footprint counter needs it (hashable: one count per model)."""

    ref: str
    tiny_vocab: int = 512
    discriminator: tuple[int, int, str] | None = None  # (experts, top_k, kind) of an upcycled discriminator


def _policy_spec(plan: Any, key: str) -> ModelSpec:
    """The model the run ``key`` descends from (its ``policy`` inputs lead back to an sft or base run)."""
    run = plan.runs[key]
    seen = set()
    while run.kind not in ("base", "sft"):
        nxt = run.inputs.get("policy")
        if nxt is None or nxt in seen:
            raise ValueError(f"{run.label}: no sft run upstream of it to take the model from")
        seen.add(nxt)
        run = plan.runs[nxt]
    return ModelSpec(str(run.config.get("model", "")), int(run.config.get("tokenizer_vocab_size", 512)))


def _discriminator_spec(plan: Any, key: str) -> ModelSpec:
    run = plan.runs[key]
    if run.kind == "align":
        run = plan.runs[run.inputs["discriminator"]]
    d = run.config.get("discriminator") or {}
    policy = _policy_spec(plan, run.key)
    base = d.get("base", "from_policy_preset")
    ref = policy.ref if base == "from_policy_preset" else base
    return ModelSpec(ref, policy.tiny_vocab, (int(d.get("num_experts", 4)), int(d.get("top_k", 2)), d.get("kind", "moe")))


def model_specs(plan: Any, key: str) -> dict[str, ModelSpec]:
    """``{"policy": ..., "discriminator": ...}`` as far as the run's kind trains them ({} for other kinds)."""
    kind = plan.runs[key].kind
    if kind not in TRAINING_KINDS:
        return {}
    out = {}
    if kind in ("base", "sft", "align", "rl"):
        out["policy"] = _policy_spec(plan, key)
    if kind in ("disc_warmup", "align"):
        out["discriminator"] = _discriminator_spec(plan, key)
    return out


def needs_check(plan: Any, key: str, tiny_presets: set[str]) -> bool:
    """Whether ``sweep run`` sizes this run before starting it: a training run that asks for resources
    or trains a model that is not a tiny preset (tiny CPU runs are skipped: no torch import for them)."""
    run = plan.runs[key]
    if run.kind not in TRAINING_KINDS:
        return False
    res = run.config.get("resources") or {}
    if res.get("processes", 1) > 1 or res.get("gpus", 0) or res.get("memory_gb"):
        return True
    return any(spec.ref not in tiny_presets for spec in model_specs(plan, key).values())


def describe(label: str, est: MemoryEstimate, device_bytes: float | None) -> str:
    """One line: the run, its peak per device and the biggest components, against the device."""
    top = sorted(((v, k) for k, v in est.components.items() if v > 0), reverse=True)[:4]
    parts = ", ".join(f"{k} {v / GB:.1f}" for v, k in top)
    cap = f" > {device_bytes * DEFAULT_MARGIN / GB:.1f} GB usable of {device_bytes / GB:.1f} GB" if device_bytes else ""
    return f"stage run {label}: estimated peak {est.peak / GB:.1f} GB per device at {est.world_size} process(es){cap} ({parts})"
