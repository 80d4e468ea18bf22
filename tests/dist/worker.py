"""A torchrun worker for the multi-process tests: train tiny-xs for a few steps, write the gathered weights.

    torchrun --nproc_per_node N tests/dist/worker.py sft|rl|disc|align|colocate|batch OUT_DIR [--kill-after K]

Writes ``OUT_DIR/weights.safetensors`` (the full state dict, from rank 0) and ``OUT_DIR/hf/`` (the HF
checkpoint rank 0 saves); ``align`` also writes ``OUT_DIR/disc.safetensors`` (the gathered discriminator).
The same script at N=1 is the single-process reference. ``colocate`` runs RL through the colocated path with each
rank's transformers copy (rollout_engine hf_colocated) behind a recording test double (tests.fakes.RecordingEngine)
and writes what each rank's double received (``received_rank{R}.safetensors``), the phases, a generation beside the
plain HF engine's and both runs' metrics (``events_rank{R}.json``), the copy's weights after its last sync
(``engine_rank{R}.safetensors``), the gathered weights after step 1 (``step1.safetensors``) and those of the same
run through the plain HF engine (``hf_weights.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from prism_lab.models import build_tiny_policy, build_tokenizer  # noqa: E402
from prism_lab.trainers import distributed as dist_  # noqa: E402
from prism_lab.trainers import checkpoint  # noqa: E402
from tests.fakes import counting_corpus  # noqa: E402


@dataclass
class Row:
    """An SFT example held in memory (the SFTCollator needs ``messages`` and ``load_images``)."""

    i: int
    source: str = "worker"

    @property
    def row(self) -> int:
        return self.i

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"<image>how many red circles are there ? add {self.i % 10} ." + " again" * (self.i % 3)},
                {"role": "assistant", "content": f"<answer>{self.i % 7}</answer>"}]

    def load_images(self) -> list[Image.Image]:
        rng = np.random.default_rng(self.i)
        return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))]


def _kill_hook(kill_after: int | None, env: dist_.DistEnv):
    def on_step(step: int, _values: dict) -> None:
        if kill_after is not None and step == kill_after and env.rank == env.world_size - 1:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash of one rank, as the OOM killer would do
    return on_step


def run_sft(model, processor, out: Path, kill_after: int | None, steps: int, resources: dict,
            length_groups: int = 1) -> None:
    from prism_lab.config.sft import SFTConfig
    from prism_lab.trainers.sft import train_sft

    world = dist_.env_world_size()
    cfg = SFTConfig(model="tiny-xs", lr=1e-3, weight_decay=0.01, batch_size=4, grad_accum=2, max_steps=steps,
                    epochs=100.0, warmup_ratio=0.0, max_length=256, save_every=2, log_every=1, threads=1, seed=0,
                    length_groups=length_groups, resources={"processes": world, **resources})
    env = dist_.init_distributed(world)
    train_sft(model, processor, [Row(i) for i in range(24)], cfg, resume_dir=out / "resume",
              on_step=_kill_hook(kill_after, env), progress=False)


def _png(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _per_prompt_engine(model, processor):
    """The HF engine, each prompt sampled with its own seed (a hash of its text).

    The real engine draws one random stream for the batch it is given, so a rank's rollouts would
    depend on which prompts share its batch; seeding per prompt makes the global batch of rollouts the
    same at any world size, which is what a parity test needs. Every prompt here is distinct.
    """
    import dataclasses
    import hashlib

    from prism_lab.rollout import HFGenerateEngine

    class PerPromptSeedEngine(HFGenerateEngine):
        def generate(self, prompts, *, seed=None, **kw):  # noqa: ARG002 - the prompt's own seed replaces it
            out = []
            for j, p in enumerate(prompts):
                s = int.from_bytes(hashlib.sha256(repr(p.messages).encode()).digest()[:4], "little")
                out += [dataclasses.replace(r, prompt_index=j) for r in super().generate([p], seed=s, **kw)]
            return out

    return PerPromptSeedEngine(model, processor)


def length_parity_score(text, gt, eq=(), acc_weight=0.8, format_weight=0.2):
    """A toy verifiable reward with variance inside each group of a random policy (its text's length parity)."""
    from prism_lab.rewards import RewardResult

    acc = float(len(text) % 2 == 0)
    return RewardResult(acc_weight * acc, acc, 0.0)


def run_rl(model, processor, out: Path, kill_after: int | None, steps: int) -> None:
    from prism_lab.config.rl import RLConfig
    from prism_lab.data.rl_parquet import RLExample
    from prism_lab.prompts import SYSTEM_PROMPT
    from prism_lab.trainers.rl import train_rl

    world = dist_.env_world_size()
    examples = [RLExample(index=i, data_source="mm_gad",
                          prompt=[{"role": "system", "content": SYSTEM_PROMPT},
                                  {"role": "user", "content": f"<image>how many red circles are there ? add {i % 10} ."}],
                          images=[_png(i)], ground_truth=str(i % 7), equivalent_answers=[])
                for i in range(16)]
    cfg = RLConfig(algorithm="grpo", algorithm_overrides={"lr": 1e-3}, steps=steps, prompts_per_step=4, n=4,
                   max_new_tokens=12, max_prompt_length=512, micro_batch_size=3, precision="fp32", save_every=2,
                   log_every=1, seed=0, resources={"processes": world})
    env = dist_.init_distributed(world)
    hook = _kill_hook(kill_after, env)
    train_rl(model, processor, examples, cfg, out_dir=out, engine=_per_prompt_engine(model, processor),
             score_fn=length_parity_score, log=lambda step, m: hook(step, m))


def run_colocate(model, processor, out: Path, steps: int) -> None:
    """RL steps rolled out through the colocated path with a real generator: each rank's transformers copy
    (``rollout_engine: hf_colocated``, built from the input checkpoint) behind a recording test double that
    writes what it receives (the double proves what prism-lab hands over, nothing about vLLM). Then one more
    sync of the trained policy and a generation beside the plain HF engine's on the sharded policy (same seed),
    and the same RL from the same init through the plain HF engine, for its metrics and weights."""
    import copy

    from safetensors.torch import save_file

    from prism_lab.config.rl import RLConfig
    from prism_lab.data.rl_parquet import RLExample
    from prism_lab.models import save_policy
    from prism_lab.rollout import HFGenerateEngine, Prompt
    from prism_lab.rollout.colocate import ColocatedEngine
    from prism_lab.rollout.hf_colocated import HFColocatedEngine
    from prism_lab.trainers.rl import train_rl
    from tests.fakes import RecordingEngine

    world = dist_.env_world_size()
    env = dist_.init_distributed(world)
    twin = copy.deepcopy(model)  # the plain HF run's policy: the same init
    if env.is_main:
        save_policy(model, processor, out / "input")  # the stage's input checkpoint
    if env.sharded:
        torch.distributed.barrier()
    fake = RecordingEngine(inner=HFColocatedEngine.from_checkpoint(out / "input", processor, dtype=torch.float32))
    engine = ColocatedEngine(fake, model, device=torch.device("cpu"), dtype=torch.float32)
    metrics: dict[str, list] = {"hf_colocated": [], "hf": []}

    def logger(name: str):
        def log(step: int, m: dict) -> None:  # collective: every rank logs every step
            metrics[name].append(m)
            if name == "hf_colocated" and step == 1:
                sd = checkpoint.full_state_dict(model, env)
                if sd:
                    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(out / "step1.safetensors"))
        return log

    examples = [RLExample(index=i, data_source="mm_gad", prompt=[{"role": "user", "content": f"add {i} ."}], images=[],
                          ground_truth="0", equivalent_answers=[]) for i in range(8)]
    cfg = RLConfig(algorithm="grpo", algorithm_overrides={"lr": 1e-3}, steps=steps, prompts_per_step=4, n=4,
                   max_new_tokens=4, max_prompt_length=512, micro_batch_size=4, precision="fp32", save_every=100,
                   log_every=1, seed=0, rollout_engine="hf_colocated", resources={"processes": world})
    res = train_rl(model, processor, examples, cfg, engine=engine, score_fn=length_parity_score,
                   log=logger("hf_colocated"))
    engine.policy_updated()  # as after an update: the next rollout syncs the trained policy
    prompts = [Prompt(messages=[{"role": "user", "content": f"how many red circles are there ? add {env.rank} ."}])]
    kw = dict(n=2, max_new_tokens=6, seed=11 + env.rank, return_logprobs=True)
    mine = engine.generate(prompts, **kw)
    plain = HFGenerateEngine(model, processor)
    dist_.sync_engine(plain, env)
    theirs = plain.generate(prompts, **kw)
    save_file({k: v.detach().clone().contiguous() for k, v in fake.inner.model.state_dict().items()},
              str(out / f"engine_rank{env.rank}.safetensors"))
    twin_res = train_rl(twin, processor, examples, cfg.model_copy(update={"rollout_engine": "hf"}),
                        score_fn=length_parity_score, log=logger("hf"))
    sd = checkpoint.full_state_dict(twin, env)
    if sd:
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(out / "hf_weights.safetensors"))
    save_file({f"{k}/{name}": t.contiguous() for k, load in enumerate(_per_sync(fake)) for name, t in load},
              str(out / f"received_rank{env.rank}.safetensors"))
    (out / f"events_rank{env.rank}.json").write_text(json.dumps({
        "phases": fake.phases(), "order": [[name for name, _ in load] for load in _per_sync(fake)],
        "generated": [[r.token_ids for r in mine], [r.token_ids for r in theirs]],
        "logprobs": [[r.logprobs for r in mine], [r.logprobs for r in theirs]], "metrics": metrics,
        "recompute_calls": [res.recompute_calls, twin_res.recompute_calls]}))


def _per_sync(fake) -> list[list]:
    """The double's loads grouped by sync (one sync = the buckets between a weights wake-up and the KV cache's)."""
    syncs, i = [], 0
    for ev in fake.events:
        if ev[0] == "wake_up" and ev[1] == ("weights",):
            syncs.append([])
        elif ev[0] == "load_weights":
            syncs[-1].extend(fake.loads[i])
            i += 1
    return [s for s in syncs if s]


def run_disc(model, processor, out: Path, kill_after: int | None, steps: int):
    """Warm up an upcycled MoE discriminator (from the tiny-xs policy) on synthetic comparisons.

    Head dropout and the MoE aux loss are off: dropout draws differ between 1 and 2 processes, and the
    aux loss is computed per forward (per rank), so neither would match a single process exactly."""
    from prism_lab.config.align import DiscriminatorConfig, DiscWarmupConfig
    from prism_lab.models.discriminator import build_discriminator
    from prism_lab.trainers.disc_warmup import Comparison, run_disc_warmup

    world = dist_.env_world_size()
    disc = build_discriminator(model, DiscriminatorConfig(head_dropout=0.0, seed=0))
    tok = processor.tokenizer
    comps = [Comparison("caption" if i % 2 else "cot", f"how many red circles are there ? add {i % 10} .",
                        Row(i).load_images()[0], tok.encode(f"<answer>{i % 7}</answer>"), tok.encode(f"{i % 5} ."),
                        group=i) for i in range(32)]
    cfg = DiscWarmupConfig(lr=1e-3, batch_size=4, grad_accum=2, epochs=1, heldout_fraction=0.0, aux_coef=0.0,
                           max_length=256, seed=0, resources={"processes": world})
    env = dist_.init_distributed(world)
    hook = _kill_hook(kill_after, env)
    run_disc_warmup(disc, processor, comps, cfg, out_dir=out, max_steps=steps, eval_points=0, save_every=2,
                    log=lambda step, m: hook(step, m))
    return disc


def _half_valid_engine(model, processor, examples):
    """The per-prompt-seeded engine, with the first of every two rollouts of a prompt replaced by the
    prompt's teacher response (format-valid, without log-probs: the trainer recomputes them), so that
    the caption/cot losses and advantages have valid samples; chosen per prompt, so the same at any
    world size."""
    import dataclasses

    from prism_lab.trainers.disc_inputs import disc_tokens, plain_ids

    inner = _per_prompt_engine(model, processor)
    by_text = {ex.messages[-1]["content"]: ex for ex in examples}
    im_end = disc_tokens(processor).im_end

    class HalfValid:
        kind = "hf"

        def __setattr__(self, name, value):  # sync_engine sets all_finished / synced: the inner engine runs
            setattr(inner, name, value)

        def generate(self, prompts, **kw):
            out = []
            for r in inner.generate(prompts, **kw):
                k = sum(1 for o in out if o.prompt_index == r.prompt_index)
                if k % 2 == 0:
                    ex = by_text[prompts[r.prompt_index].messages[-1]["content"]]
                    text = ex.teacher_caption + "\n" + ex.teacher_cot
                    r = dataclasses.replace(r, token_ids=plain_ids(processor, text) + [im_end], text=text,
                                            logprobs=None, finish_reason="stop")
                out.append(r)
            return out

    return HalfValid()


def run_align(model, processor, out: Path, kill_after: int | None, steps: int):
    """Two alignment steps (prism variant) of tiny-xs against an upcycled MoE discriminator built from it.

    Head dropout is off (its draws differ between 1 and 2 processes)."""
    from prism_lab.config.align import AlignConfig, DiscriminatorConfig
    from prism_lab.models.discriminator import build_discriminator
    from prism_lab.trainers.align import AlignExample
    from prism_lab.trainers.align import run_align as align

    world = dist_.env_world_size()
    disc = build_discriminator(model, DiscriminatorConfig(num_experts=2, top_k=2, head_dropout=0.0, seed=0))
    examples = [AlignExample(index=i, messages=[{"role": "user",
                                                 "content": f"<image>how many red circles are there ? add {i % 10} ."}],
                             load_images=Row(i).load_images, teacher_caption=f"<caption>\n- {i % 6} red circles\n</caption>",
                             teacher_cot=f"<think>\n{i % 6} plus {i % 10}\n</think>\n<answer>\n{i % 16}\n</answer>",
                             ground_truth=str(i % 16))
                for i in range(16)]
    cfg = AlignConfig(steps=steps, prompts_per_step=4, n=4, max_new_tokens=12, actor_lr=1e-3, critic_lr=1e-3,
                      save_every=1, seed=0, disc_micro_batch=3, actor_micro_batch=3, resources={"processes": world})
    env = dist_.init_distributed(world)
    hook = _kill_hook(kill_after, env)
    logged: list[dict] = []

    def log(step: int, m: dict) -> None:
        logged.append({"step": step, **m})
        hook(step, m)

    summary = align(model, processor, disc, examples, cfg, out_dir=out,
                    engine=_half_valid_engine(model, processor, examples), log=log)
    if env.is_main:
        (out / "metrics.json").write_text(json.dumps(logged, indent=1))
    if env.is_main:
        print(f"align: resumed from step {summary['resumed_from']}/{steps}, final d_loss {summary['final']['d_loss']}",
              flush=True)
    sd = checkpoint.full_state_dict(disc, env)
    if env.is_main:
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(out / "disc.safetensors"))


#: ``batch``: the jobs one launch runs in turn, each into OUT_DIR/<name> (sft first, so its result is the one a
#: launch of its own gives): (name, mode, steps, SFT resources, SFT length groups, sharded runs only). One launch
#: instead of six saves the ranks' start-up; each job starts from a fresh policy.
BATCH = (("sft", "sft", 4, {}, 1, False), ("rl", "rl", 2, {}, 1, False), ("disc", "disc", 4, {}, 1, False),
         ("align", "align", 2, {}, 1, False), ("sft-gc-groups", "sft", 4, {"gradient_checkpointing": True}, 2, True),
         ("colocate", "colocate", 2, {}, 1, True))


def run_job(mode: str, out: Path, kill_after: int | None, steps: int, resources: dict, length_groups: int) -> None:
    """One job: a fresh tiny-xs policy (seed 0), trained by ``mode``, its gathered weights written by rank 0."""
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(counting_corpus(), vocab_size=300)
    model, processor = build_tiny_policy("tiny-xs", tok, seed=0)
    if os.environ.get("RANK", "0") == "0":
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(out / "init.safetensors"))
    if mode == "sft":
        run_sft(model, processor, out, kill_after, steps, resources, length_groups)
    elif mode == "rl":
        run_rl(model, processor, out, kill_after, steps)
    elif mode == "align":
        run_align(model, processor, out, kill_after, steps)
    elif mode == "colocate":
        run_colocate(model, processor, out, steps)
    else:
        model = run_disc(model, processor, out, kill_after, steps)
    env = dist_.init_distributed()
    sd = checkpoint.full_state_dict(model, env)
    if env.is_main:
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(out / "weights.safetensors"))
    if mode in ("sft", "rl", "colocate"):
        checkpoint.save_hf_checkpoint(model, processor, out / "hf", env)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sft", "rl", "disc", "align", "colocate", "batch"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kill-after", type=int, default=None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--resources", default="{}", help="JSON merged into the SFT config's resources.")
    ap.add_argument("--length-groups", type=int, default=1, help="The SFT config's length_groups.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.mode == "batch":
        sharded = dist_.env_world_size() > 1
        jobs = [(mode, args.out / name, steps, resources, groups)
                for name, mode, steps, resources, groups, sharded_only in BATCH if sharded or not sharded_only]
    else:
        jobs = [(args.mode, args.out, args.steps, json.loads(args.resources), args.length_groups)]
    for mode, out, steps, resources, groups in jobs:
        run_job(mode, out, args.kill_after, steps, resources, groups)
    if dist_.init_distributed().sharded:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
