"""Token-budget micro-batches under FSDP2 with two real gloo processes (trainers/actor.py).

Rank 0 holds three short rows (one micro-batch under the budget), rank 1 three long rows (three micro-batches).
FSDP2 gathers parameters in every forward and reduces gradients in every backward, so a rank that ran fewer
passes would leave the other waiting (the group's timeout turns that hang into an error). The ranks take the
largest count over ranks and pad with passes that add no gradient; the update must equal the unsharded one
with a single micro-batch of every row.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prism_lab.config.algorithms import ActorConfig
from prism_lab.trainers.actor import micro_batches, ppo_update, recompute_logprobs
from prism_lab.trainers.distributed import DistEnv, shard_model

# Rows 0, 2, 4 (rank 0): 2 + 1 tokens each; rows 1, 3, 5 (rank 1): 2 + 5 tokens each.
PROMPTS = {"input_ids": torch.tensor([[5, 6]] * 6), "attention_mask": torch.ones(6, 2, dtype=torch.long)}
COMPLETIONS = [[3], [4, 14, 15, 16, 17], [11], [17, 18, 19, 20, 21], [12], [22, 23, 24, 25, 26]]
ROWS = list(range(6))
BUDGET = 10  # rank 0: [0, 2, 4] (9 tokens); rank 1: [1], [3], [5] (7 tokens each)
ADV = [1.0, -0.5, 0.25, -1.0, 0.5, 0.75]
ACTOR = ActorConfig(loss_agg_mode="token-mean", grad_clip=1e6)


def _model(tokenizer) -> torch.nn.Module:
    from prism_lab.models.loader import build_tiny_policy

    return build_tiny_policy("tiny-xs", tokenizer, seed=0)[0].float()


def _mini(env, max_tokens):
    return [micro_batches(PROMPTS, ROWS, COMPLETIONS, ROWS, size=len(ROWS), pad_token_id=0, image_chunks=None,
                          device="cpu", env=env, max_tokens=max_tokens)]


def _worker(rank: int, store: str, tokenizer, old, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    env = DistEnv(rank=rank, world_size=2)
    model = _model(tokenizer)
    shard_model(model, env, param_dtype=torch.float32, reduce_dtype=torch.float32, offload=False)
    mini = _mini(env, BUDGET)
    counts = [len(mini[0]), sum(1 for rows, _ in mini[0] if rows)]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ppo_update(model, opt, mini, old, ADV, ACTOR, temperature=1.0, suppress_token_ids=(), env=env,
               backward=lambda loss: (loss * env.world_size).backward())
    full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
    if rank == 0:
        torch.save(full, f"{out}/params.pt")
    torch.save(counts, f"{out}/counts{rank}.pt")
    dist.destroy_process_group()


def test_ranks_with_different_micro_batch_counts_agree_with_the_unsharded_update(tmp_path):
    from prism_lab.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer([f"count {i} red circles and {i + 1} blue squares" for i in range(50)], vocab_size=300)
    ref = _model(tokenizer)
    cur = recompute_logprobs(ref, _mini(None, None)[0], [len(c) for c in COMPLETIONS], temperature=1.0,
                             suppress_token_ids=())
    old = {i: lp - 0.1 * (i % 3 + 1) for i, lp in cur.items()}
    start = {n: p.detach().clone() for n, p in ref.named_parameters()}
    ppo_update(ref, torch.optim.SGD(ref.parameters(), lr=1.0), _mini(None, None), old, ADV, ACTOR,
               temperature=1.0, suppress_token_ids=())
    mp.spawn(_worker, args=(str(tmp_path / "store"), tokenizer, old, str(tmp_path)), nprocs=2, join=True)
    # rank 0 cut its rows into 1 micro-batch and ran 2 padding passes; rank 1 ran its 3
    assert torch.load(tmp_path / "counts0.pt") == [3, 1]
    assert torch.load(tmp_path / "counts1.pt") == [3, 3]
    sharded = torch.load(tmp_path / "params.pt")
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in ref.named_parameters())
    assert moved > 1e-4
    for n, p in ref.named_parameters():
        torch.testing.assert_close(sharded[n], p.detach(), atol=1e-6, rtol=0, msg=n)
