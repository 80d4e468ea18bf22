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
* loss buffers (``memory_terms``): the logits of the micro-batch's T tokens in the compute dtype plus
  three fp32 ``[T x vocab]`` buffers at the peak of the loss backward (SFT and the actor update, T = the
  token budget when set, else rows x length); the no-grad log-prob recompute (RL, its own budget) keeps
  the logits plus two fp32 buffers.
* attention masks (``memory_terms.attention_mask_bytes``): on CPU the attention is SDPA, which keeps an
  additive ``[rows x length x length]`` mask per layer for the backward of a padded batch (one under
  checkpointing); on a GPU the planner assumes flash-attn (the ``gpu`` extra), which keeps none.
* rollout (rl, align): vLLM's ``gpu_memory_utilization`` share of the GPU, or HF generate's gathered
  weights and KV cache for this rank's rollouts of one call, ``seqs x (prompt + response) x layers x 2
  x kv x bytes`` (DAPO: ``gen_batch_multiplier`` x the prompts).
* align adds the discriminator: its sharded state, and the graphs of every scoring call of the step,
  kept until its backward.

Peak = sharded state on the device + the training phase (the models train one after the other) and
the rollout phase: added when the engine keeps its memory (vLLM without sleep mode), the larger of the
two when it frees it (vLLM's sleep mode, which the colocated engine uses, and HF generate). RL loads the full fp32 policy onto its device before sharding; on
CPU every rank does. ``host_node``: the host memory of the node running all ranks (every rank loads its
models in fp32 before sharding; offloaded state). It is an estimate for planning (it ignores the
allocator's fragmentation and CUDA context, ~1-2 GB per GPU); the ``margin`` of the fit check covers that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prism_lab.harness import memory_terms as terms

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
    host_node: float = 0.0  # host memory of the node running every rank (loading or offloaded state)
    notes: list[str] = field(default_factory=list)

    def gb(self, name: str) -> float:
        return self.components.get(name, 0.0) / GB

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "peak_gb": round(self.peak / GB, 2), "host_gb": round(self.host / GB, 2),
                "host_node_gb": round(self.host_node / GB, 2),
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


def activation_bytes(shape: Mapping[str, Any], tokens: int, images: int, nbytes: int, checkpointing: bool,
                     recompute_tokens: int | None = None) -> float:
    """Activations kept for the backward pass of ``tokens`` text tokens and ``images`` images; with
    checkpointing, ``recompute_tokens`` (default: all of them) have one layer's full set recomputed at once."""
    per_layer = layer_activation_bytes_per_token(shape, nbytes)
    rt = tokens if recompute_tokens is None else recompute_tokens
    if checkpointing:
        text = shape["layers"] * tokens * shape["hidden"] * nbytes + rt * per_layer
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
    """The loss's [tokens x vocab] buffers at the peak of its backward (memory_terms.loss_buffer_bytes)."""
    return terms.loss_buffer_bytes(tokens, shape["vocab"], nbytes)


def kv_cache_bytes(shape: Mapping[str, Any], seqs: int, length: int, nbytes: int) -> float:
    return seqs * length * shape["layers"] * 2 * shape["kv_dim"] * nbytes


def _seq_length(cfg: Mapping[str, Any], kind: str) -> int:
    """Prompt + response tokens of one rollout (rl: 2048 + 8192, align: 2048 + 6144 by default)."""
    return cfg.get("max_prompt_length", 2048) + cfg.get("max_new_tokens", 6144 if kind == "align" else 8192)


def _train_tokens(kind: str, cfg: Mapping[str, Any], world: int) -> tuple[int, int]:
    """(tokens, images) of one rank's micro-batch: the padded upper bound. SFT and warm-up batches are
    global (split over the ranks); the RL and alignment actor micro-batch is per rank: its token budget
    (``update_token_budget``) when set, else ``micro_batch_size`` rows of prompt + response."""
    if kind in ("base", "sft"):
        rows = math.ceil(cfg.get("batch_size", 2) / world)
        return rows * cfg.get("max_length", 8192), rows
    if kind == "disc_warmup":
        rows = 2 * math.ceil(cfg.get("batch_size", 4) / world)  # teacher and student of each comparison
        return rows * cfg.get("max_length", 8192), rows
    length = _seq_length(cfg, kind)
    tokens = terms.micro_batch_tokens(cfg.get("update_token_budget"), cfg.get("micro_batch_size", 1), length)
    return tokens, max(1, tokens // length)


def _state(name: str, shape: Mapping[str, Any], world: int, prec: Precision, offload: bool,
           est: MemoryEstimate) -> float:
    """Adds one trained model's sharded state; returns what of it stays on the device."""
    resident = 0.0
    for k, v in sharded_state_bytes(shape["params"], world, prec).items():
        est.components[f"{name}/{k}"] = 0.0 if offload else v
        if offload:
            est.host += v
        else:
            resident += v
    return resident


def _gathered(name: str, shape: Mapping[str, Any], world: int, prec: Precision, offload: bool,
              est: MemoryEstimate) -> float:
    est.components[f"{name}/gathered"] = g = gathered_bytes(
        shape, 1 if (world == 1 and not offload) else max(world, 2), prec)
    return g


def _actor_phase(kind: str, cfg: Mapping[str, Any], shape: Mapping[str, Any], world: int, prec: Precision,
                 gc: bool, gathered: float, dense_mask: bool, est: MemoryEstimate) -> float:
    """The policy's training phase: the larger of its update micro-batch (activations + loss buffers, and with
    ``dense_mask`` (SDPA) the attention masks of its rows) and, in RL, the no-grad log-prob recompute with its
    own token budget."""
    tokens, rows = _train_tokens(kind, cfg, world)  # one image per row
    length = cfg.get("max_length", 8192) if kind in ("base", "sft") else _seq_length(cfg, kind)
    act = activation_bytes(shape, tokens, rows, prec.param, gc)
    if kind in ("rl", "align"):  # the actor's log-probs and entropies are computed in chunks
        loss = terms.chunked_loss_buffer_bytes(tokens, shape["vocab"], prec.param)
    else:
        loss = logits_bytes(shape, tokens, prec.param)
    mask = terms.attention_mask_bytes(rows, length, prec.param, 1 if gc else shape["layers"]) if dense_mask else 0.0
    est.components["policy/activations"] = act
    est.components["policy/loss_buffers"] = loss
    est.components["policy/attention_masks"] = mask
    update = gathered + act + loss + mask
    if kind != "rl":  # alignment takes the rollout's log-probs as the old ones (trainers/align.py)
        return update
    rt = terms.micro_batch_tokens(cfg.get("log_prob_token_budget", cfg.get("update_token_budget")),
                                  cfg.get("micro_batch_size", 1), length)
    ract = terms.no_grad_activation_bytes(layer_activation_bytes_per_token(shape, prec.param), rt)
    rbuf = terms.chunked_recompute_buffer_bytes(rt, shape["vocab"], prec.param)
    rmask = terms.attention_mask_bytes(max(1, rt // length), length, prec.param, 1) if dense_mask else 0.0
    est.components["policy/recompute_buffers"] = rbuf
    return max(update, gathered + ract + rbuf + rmask)


def _disc_phase(kind: str, cfg: Mapping[str, Any], shape: Mapping[str, Any], world: int, prec: Precision,
                gc: bool, gathered: float, est: MemoryEstimate) -> float:
    """The discriminator's training phase. Warm-up: one micro-batch of comparisons. Alignment: the graphs
    of every scoring call of the step stay until its backward (``disc_micro_batch`` rows recomputed at a
    time under checkpointing)."""
    if kind == "disc_warmup":
        tokens, images = _train_tokens(kind, cfg, world)
        act = activation_bytes(shape, tokens, images, prec.param, gc)
    else:
        prompts, length = cfg.get("prompts_per_step", 4), _seq_length(cfg, kind)
        tokens, images = terms.disc_graph_tokens(prompts * cfg.get("n", 16), prompts, world,
                                                 cfg.get("max_prompt_length", 2048), length - cfg.get("max_prompt_length", 2048))
        act = activation_bytes(shape, tokens, images, prec.param, gc,
                               recompute_tokens=min(images, cfg.get("disc_micro_batch", 16)) * length)
    est.components["discriminator/activations"] = act
    est.components["discriminator/scores"] = scores = tokens * 4.0  # one fp32 score per token from the head
    return gathered + act + scores


def _rollout_phase(kind: str, cfg: Mapping[str, Any], shape: Mapping[str, Any], world: int, prec: Precision,
                   on_gpu: bool, device_bytes: float | None, gathered: float,
                   est: MemoryEstimate) -> tuple[float, bool]:
    """(bytes of the rollout phase, whether the engine frees them before training)."""
    engine = cfg.get("rollout_engine", "hf" if kind == "align" else "auto")
    mult = cfg.get("gen_batch_multiplier", 1.0)
    if on_gpu and engine in ("vllm", "auto") and device_bytes:
        share = cfg.get("rollout_gpu_memory_utilization", VLLM_GPU_MEMORY_UTILIZATION)
        est.components["generation/vllm"] = kv = terms.vllm_rollout_bytes(share, device_bytes)
        if mult > 1:
            est.notes.append(f"generation batches of {mult:g}x the prompts queue inside vLLM's reservation")
        return kv, terms.VLLM_SLEEPS
    batch = max(cfg.get("n", 1), cfg.get("rollout_batch_size", 64)) if kind == "align" else None
    seqs = terms.rollout_sequences(cfg.get("prompts_per_step", 1), world, cfg.get("n", 1), mult, batch)
    est.components["generation/kv_cache"] = kv = kv_cache_bytes(shape, seqs, _seq_length(cfg, kind), prec.param)
    return gathered + kv, True  # HF generate drops its KV cache when the call returns


def estimate(kind: str, cfg: Mapping[str, Any], shapes: Mapping[str, Mapping[str, Any]], *,
             on_gpu: bool, device_bytes: float | None = None) -> MemoryEstimate:
    """Peak bytes per device of a ``kind`` run with stage config ``cfg`` (its ``resources`` included).

    ``shapes``: ``{"policy": ModelShape dict}``, plus ``"discriminator"`` for disc_warmup and align
    (disc_warmup trains only the discriminator). ``cfg`` holds the stage fields plus the resolved actor
    settings (memory_fit.planner_config): ``update_token_budget``, ``log_prob_token_budget``,
    ``gen_batch_multiplier``. With the vLLM engine on a GPU the rollout phase is vLLM's reservation,
    ``gpu_memory_utilization x device_bytes`` (0.6, the engine's default), weights and KV cache included.
    """
    res = cfg.get("resources") or {}
    world = int(res.get("processes", 1))
    prec = Precision.of(res, cfg.get("precision"), on_gpu)
    offload = bool(res.get("offload", False)) and on_gpu
    gc = bool(res.get("gradient_checkpointing", False))
    est = MemoryEstimate(world_size=world)
    trained = ["discriminator"] if kind == "disc_warmup" else ["policy"] + (["discriminator"] if kind == "align" else [])
    resident = sum(_state(name, shapes[name], world, prec, offload, est) for name in trained)
    gathered = {name: _gathered(name, shapes[name], world, prec, offload, est) for name in trained}
    phases = []  # the models train one after the other
    if "policy" in trained:
        phases.append(_actor_phase(kind, cfg, shapes["policy"], world, prec, gc, gathered["policy"], not on_gpu, est))
    if "discriminator" in trained:
        phases.append(_disc_phase(kind, cfg, shapes["discriminator"], world, prec, gc, gathered["discriminator"], est))
    training = max(phases)
    rollout, sleeps = 0.0, True
    if kind in ("rl", "align"):
        rollout, sleeps = _rollout_phase(kind, cfg, shapes["policy"], world, prec, on_gpu, device_bytes,
                                         gathered["policy"], est)
    if res.get("offload") and not on_gpu:
        est.notes.append("offload ignored on CPU (host memory is the device)")
    load = terms.host_load_bytes([s["params"] for s in shapes.values()])
    if not on_gpu:  # every rank is a Python process with torch loaded, in the same host memory
        est.components["process/runtime"] = PROCESS_RUNTIME_BYTES
        resident += PROCESS_RUNTIME_BYTES
    est.peak = resident + terms.phase_peak(rollout, training, sleeps)
    if not on_gpu or kind == "rl":  # the full fp32 model on the device before sharding (rl loads onto it)
        est.peak = max(est.peak, load + (0.0 if on_gpu else PROCESS_RUNTIME_BYTES))
    est.host_node = terms.host_node_bytes(world, load, est.host, PROCESS_RUNTIME_BYTES,
                                          LAUNCHER_BYTES if world > 1 else 0.0)
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
    """``{"policy": ..., "discriminator": ...}`` as far as the run's kind loads them ({} for other kinds):
    the warm-up trains only the discriminator but loads the policy too (to generate student answers)."""
    kind = plan.runs[key].kind
    if kind not in TRAINING_KINDS:
        return {}
    out = {"policy": _policy_spec(plan, key)}
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
