"""The terms of the memory planner that follow what the trainers run (pure arithmetic; no torch).

``prism_lab.harness.memory`` adds these up per stage kind; each term is one small function so the
planner's table can name it and a test can check it against a hand count.

Loss buffers, read from the code that runs (bytes per token of the micro-batch and per vocabulary entry):

* SFT (trainers/sft.py) and the actor update (trainers/actor.py -> trainers/logprobs.py) keep the logits
  in the compute dtype, and at the peak of the loss backward three fp32 ``[tokens x vocab]`` buffers: the
  fp32 logits the log-softmax/logsumexp saved for backward (SFT: the log-softmax output), the incoming
  gradient and the gradient it produces (the exp/softmax temporary of the forward, and the entropy's
  softmax and product in the actor's no-grad entropy, are as many fp32 buffers at the forward's peak).
* The no-grad log-prob recompute keeps the logits in the compute dtype plus two fp32 buffers at its
  peak: the fp32 (vision-token-masked) copy and the logsumexp's exp temporary.

The actor update and the recompute of RL and alignment compute their log-probs and entropies in chunks of
``LOGPROB_CHUNK_ROWS`` tokens (prism_lab/algos/token_stats.py): their fp32 buffers exist for one chunk at a
time, while the logits (and, in the update, the gradient of the logits) stay ``[tokens x vocab]`` in the
compute dtype. SFT's cross-entropy is not chunked.

Attention masks (SDPA, the attention on CPU and on a GPU without flash-attn; flash-attn keeps none): a padded
batch, and every batch of the shared-prefix log-prob path, goes through the decoder with a dense boolean
``[rows x 1 x length x length]`` mask, and SDPA turns it into an additive mask of the compute dtype in every layer
(``convert_boolean_attn_mask``), which autograd keeps for that layer's backward: one copy per layer without
gradient checkpointing, one (the layer being recomputed) with it, one at a time without gradients.
Measured on tiny-xs (benchmarks/perf/memory_planner_cpu.py): the update's peak grows by ~9 bytes per row and
squared length at 2 layers in fp32, 1 + 2 x 4.

Phases of RL and alignment: the rollout engine's memory and the training memory add while the engine
keeps its memory during training (vLLM without sleep mode keeps its ``gpu_memory_utilization`` share of
the GPU: weights and KV cache); an engine that frees it (HF generate drops its KV cache when the call
returns; a sleeping vLLM) peaks at the larger of the two.
"""

from __future__ import annotations

import math

#: fp32 [tokens x vocab] buffers alive at the peak of a loss backward (SFT and the actor update).
LOSS_FP32_BUFFERS = 3
#: fp32 [tokens x vocab] buffers alive at the peak of the no-grad log-prob recompute.
RECOMPUTE_FP32_BUFFERS = 2
#: Tokens per chunk of the log-prob/entropy computation of the actor (prism_lab.algos.token_stats.DEFAULT_CHUNK_ROWS;
#: a test keeps the two equal).
LOGPROB_CHUNK_ROWS = 1024
#: Whether the vLLM engine of a training stage frees its GPU memory before the update: the colocated engine
#: (prism_lab.rollout.colocate) is built with sleep mode and sleeps after every generate call.
VLLM_SLEEPS = True


def micro_batch_tokens(budget: int | None, rows: int, length: int) -> int:
    """Tokens of one micro-batch: the token budget when one is set, else ``rows x length`` (padded)."""
    return int(budget) if budget else int(rows) * int(length)


def loss_buffer_bytes(tokens: int, vocab: int, nbytes: int) -> float:
    """Logits of ``tokens`` positions in the compute dtype plus the loss backward's fp32 buffers."""
    return float(tokens) * vocab * (nbytes + 4 * LOSS_FP32_BUFFERS)


def recompute_buffer_bytes(tokens: int, vocab: int, nbytes: int) -> float:
    """Logits of the no-grad log-prob recompute in the compute dtype plus its fp32 temporaries."""
    return float(tokens) * vocab * (nbytes + 4 * RECOMPUTE_FP32_BUFFERS)


def chunked_loss_buffer_bytes(tokens: int, vocab: int, nbytes: int, chunk_rows: int = LOGPROB_CHUNK_ROWS) -> float:
    """The actor update's logits and their gradient (compute dtype, every token) plus the loss backward's fp32
    buffers for one chunk of ``chunk_rows`` tokens."""
    rows = min(int(tokens), int(chunk_rows))
    return float(tokens) * vocab * 2 * nbytes + float(rows) * vocab * 4 * LOSS_FP32_BUFFERS


def chunked_recompute_buffer_bytes(tokens: int, vocab: int, nbytes: int,
                                   chunk_rows: int = LOGPROB_CHUNK_ROWS) -> float:
    """The no-grad recompute's logits (compute dtype, every token) plus its fp32 temporaries for one chunk."""
    rows = min(int(tokens), int(chunk_rows))
    return float(tokens) * vocab * nbytes + float(rows) * vocab * 4 * RECOMPUTE_FP32_BUFFERS


def attention_mask_bytes(rows: int, length: int, nbytes: int, masks: int) -> float:
    """The boolean ``[rows x length x length]`` mask and ``masks`` additive copies of it in the compute dtype
    (``nbytes``): ``layers`` in a backward without checkpointing, else 1."""
    return float(rows) * length * length * (1 + nbytes * masks)


def no_grad_activation_bytes(per_layer_token: float, tokens: int) -> float:
    """Activations of a forward without autograd: one layer's set at a time."""
    return float(tokens) * per_layer_token


def rollout_sequences(prompts: int, world: int, n: int, multiplier: float = 1.0,
                      batch_size: int | None = None) -> int:
    """Sequences in one generate call of one rank: its share of ``prompts x multiplier`` (DAPO's
    generation batch multiplier), ``n`` samples each, at most ``batch_size // n`` prompts per call."""
    mine = math.ceil(math.ceil(prompts * multiplier) / max(1, world))
    if batch_size:
        mine = min(mine, max(1, batch_size // n))
    return max(1, mine) * n


def vllm_rollout_bytes(utilization: float, device_bytes: float) -> float:
    """vLLM's share of the GPU (its weights and KV cache together)."""
    return utilization * device_bytes


def phase_peak(rollout: float, training: float, engine_sleeps: bool) -> float:
    """Peak of the two phases on top of the resident state: added unless the engine frees its memory."""
    return max(rollout, training) if engine_sleeps else rollout + training


def disc_graph_tokens(batch: int, prompts: int, world: int, prompt_len: int, response_len: int) -> tuple[int, int]:
    """(tokens, rows) whose discriminator graphs one rank keeps until the backward of an alignment step:
    every scoring call of the step, this rank's share of each (trainers/align_variants.py). Student
    caption and cot: one row per rollout each, the prompt before each segment (the two segments share the
    response); teacher caption and cot: one row per prompt each, a segment of up to a response each."""
    students = math.ceil(batch / max(1, world))
    teachers = math.ceil(prompts / max(1, world))
    tokens = students * (2 * prompt_len + response_len) + 2 * teachers * (prompt_len + response_len)
    return tokens, 2 * (students + teachers)


def host_load_bytes(params: list[int], nbytes: int = 4) -> float:
    """Host memory of one rank while it loads the full models (fp32 by default) before sharding them."""
    return float(sum(params)) * nbytes


def host_node_bytes(ranks: int, load_per_rank: float, offloaded_per_rank: float, runtime_per_rank: float,
                    launcher: float) -> float:
    """Host memory of a node running ``ranks`` ranks of one stage run: the larger of loading (every rank
    holds its full models) and running (every rank's offloaded state), plus each rank's runtime and the
    launcher."""
    return ranks * (max(load_per_rank, offloaded_per_rank) + runtime_per_rank) + launcher
