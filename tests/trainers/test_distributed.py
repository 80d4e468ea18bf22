"""Multi-process training with real torchrun processes over gloo (2 CPU processes, tiny-xs).

Each test starts ``tests/dist/worker.py`` under ``python -m torch.distributed.run`` and compares the
weights it gathers. Tolerance: 5e-5 absolute on every parameter after a few AdamW steps at lr 1e-3
(measured differences 1 vs 2 processes: 4.9e-6 for SFT, 3.5e-6 for RL, 9.4e-6 for align; they come from the order of
the gradient sums, which AdamW's normalisation amplifies for near-zero gradients). Each test also
checks that training moved the weights by far more than the tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "dist" / "worker.py"
ATOL = 5e-5


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PRISM_LAB_WANDB="disabled")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def batch_runs(tmp_path_factory) -> dict[int, Path]:
    """The worker's ``batch`` (sft, rl, disc, align in turn, each from a fresh policy; at 2 processes also SFT with
    checkpointing and length groups, and RL through the colocated engine) at 1 and at 2 processes: two launches
    instead of ten."""
    out = {}
    for n in (1, 2):
        d = tmp_path_factory.mktemp(f"batch{n}")
        _ok(torchrun(n, "batch", str(d), timeout=480))
        out[n] = d
    return out


@pytest.fixture(scope="module")
def sft_runs(batch_runs) -> dict[int, Path]:
    return {n: d / "sft" for n, d in batch_runs.items()}


def test_sft_two_processes_match_one(sft_runs):
    one = load_file(str(sft_runs[1] / "weights.safetensors"))
    two = load_file(str(sft_runs[2] / "weights.safetensors"))
    init = load_file(str(sft_runs[1] / "init.safetensors"))
    assert max_diff(one, init) > 20 * ATOL  # the steps did train (about 2.5e-3)
    assert max_diff(one, two) < ATOL


def test_gradient_checkpointing_and_length_groups_under_fsdp_change_no_weight(sft_runs, batch_runs):
    """Checkpointed blocks recompute their forward in the backward, and each rank cuts its share of a micro-batch
    into 2 runs by length (every rank makes the same number of forward passes: FSDP2 would hang otherwise): the
    weights are those of one padded batch in one process. (One launch for both: either alone changing the
    weights would show here.)"""
    one = load_file(str(sft_runs[1] / "weights.safetensors"))
    assert not (batch_runs[1] / "sft-gc-groups").exists()  # the batch's 2-process launch only
    assert max_diff(one, load_file(str(batch_runs[2] / "sft-gc-groups" / "weights.safetensors"))) < ATOL


def test_sharded_state_gathers_into_an_ordinary_hf_checkpoint(sft_runs):
    from transformers import AutoModelForImageTextToText

    gathered = load_file(str(sft_runs[2] / "weights.safetensors"))
    hf_dir = sft_runs[2] / "hf"
    on_disk = load_file(str(hf_dir / "model.safetensors"))
    assert max_diff(gathered, on_disk) == 0.0  # rank 0 wrote exactly the gathered weights
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]  # not the FSDP wrapper class
    model = AutoModelForImageTextToText.from_pretrained(str(hf_dir))
    loaded = {k: v for k, v in model.state_dict().items()}
    assert max_diff(gathered, loaded) == 0.0
    single = load_file(str(sft_runs[1] / "hf" / "model.safetensors"))
    assert max_diff(single, on_disk) < ATOL  # the same checkpoint a single process writes


def test_rl_two_processes_match_one(batch_runs):
    one = load_file(str(batch_runs[1] / "rl" / "weights.safetensors"))
    two = load_file(str(batch_runs[2] / "rl" / "weights.safetensors"))
    init = load_file(str(batch_runs[1] / "rl" / "init.safetensors"))
    assert max_diff(one, init) > 20 * ATOL  # about 2e-3
    assert max_diff(one, two) < ATOL


def test_disc_warmup_two_processes_match_one(batch_runs):
    one = load_file(str(batch_runs[1] / "disc" / "weights.safetensors"))
    two = load_file(str(batch_runs[2] / "disc" / "weights.safetensors"))
    policy_init = load_file(str(batch_runs[1] / "disc" / "init.safetensors"))
    key = "backbone.language_model.embed_tokens.weight"  # upcycling copies the policy's embeddings as they are
    assert float((one[key] - policy_init["model.language_model.embed_tokens.weight"]).abs().max()) > 20 * ATOL
    assert any(k.startswith("head.") for k in one)  # the score head is part of the gathered state
    assert max_diff(one, two) < ATOL


@pytest.fixture(scope="module")
def killed_sft(tmp_path_factory) -> Path:
    """A 2-process SFT run whose rank 1 SIGKILLed itself after step 3 (state saved at step 2); tests resume copies."""
    d = tmp_path_factory.mktemp("killed-sft")
    killed = torchrun(2, "sft", str(d), "--kill-after", "3")
    assert killed.returncode != 0
    assert (d / "resume" / "sharded.json").is_file()
    assert not (d / "weights.safetensors").exists()
    return d


def test_a_killed_two_process_run_resumes_to_the_same_weights(sft_runs, killed_sft, tmp_path):
    import shutil

    shutil.copytree(killed_sft, tmp_path / "a")
    resumed = torchrun(2, "sft", str(tmp_path / "a"))
    _ok(resumed)
    assert "resumed from step 2/4" in resumed.stdout
    done = load_file(str(tmp_path / "a" / "weights.safetensors"))
    uninterrupted = load_file(str(sft_runs[2] / "weights.safetensors"))
    assert max_diff(done, uninterrupted) == 0.0  # same world size: bit for bit


@pytest.mark.slow  # three torchrun launches: about a minute on 2 cores
def test_sharded_state_resumes_in_one_process_and_the_reverse_fails_clearly(sft_runs, killed_sft, tmp_path):
    import shutil

    shutil.copytree(killed_sft, tmp_path / "a")
    resumed = torchrun(1, "sft", str(tmp_path / "a"))
    _ok(resumed)
    assert "resumed from step 2/4" in resumed.stdout
    one = load_file(str(sft_runs[1] / "weights.safetensors"))
    assert max_diff(load_file(str(tmp_path / "a" / "weights.safetensors")), one) < ATOL
    _ = torchrun(1, "sft", str(tmp_path / "b"), "--kill-after", "3")
    refused = torchrun(2, "sft", str(tmp_path / "b"))
    assert refused.returncode != 0
    assert "written by 1 process and this run has 2" in refused.stdout + refused.stderr


@pytest.fixture(scope="module")
def align_runs(batch_runs) -> dict[int, Path]:
    return {n: d / "align" for n, d in batch_runs.items()}


def test_align_two_processes_match_one(align_runs):
    """Two alignment steps (rollouts split over the ranks and gathered, sharded discriminator scoring and
    update, sharded PPO): the same policy and discriminator as one process (measured 3.7e-6 and 9.4e-6).

    The worker's discriminator routes every token to both of its experts: top-k routing is discrete, and a
    1e-5 difference after the first step can flip a token's experts in the second (then the scores, not the
    arithmetic, differ); with top_k < num_experts one step still matches within the tolerance."""
    init = load_file(str(align_runs[1] / "init.safetensors"))
    for name in ("weights", "disc"):
        one = load_file(str(align_runs[1] / f"{name}.safetensors"))
        two = load_file(str(align_runs[2] / f"{name}.safetensors"))
        assert max_diff(one, two) < ATOL, name
    policy = load_file(str(align_runs[1] / "weights.safetensors"))
    assert max_diff(policy, init) > 20 * ATOL  # about 2e-3
    disc = load_file(str(align_runs[1] / "disc.safetensors"))
    key = "backbone.language_model.embed_tokens.weight"  # upcycled from the policy's embeddings
    assert float((disc[key] - init["model.language_model.embed_tokens.weight"]).abs().max()) > 20 * ATOL
    one_m = json.loads((align_runs[1] / "metrics.json").read_text())
    two_m = json.loads((align_runs[2] / "metrics.json").read_text())
    assert one_m[0]["valid_ratio"] == 0.5 and "d_acc" in one_m[0]  # the caption/cot losses had valid samples
    for a, b in zip(one_m, two_m):  # rank 0 logs metrics of the global batch
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a if not k.startswith("time/")), a["step"]
    assert not (align_runs[2] / "resume").exists()  # removed at the end, by rank 0


@pytest.mark.slow  # two torchrun launches of the alignment loop
def test_a_killed_two_process_align_run_resumes_bit_for_bit(align_runs, tmp_path):
    """Alignment's resumable state (policy and discriminator with their optimizers) after a rank died: the
    resumed run ends on the uninterrupted run's weights, bit for bit. Both models go through
    ``checkpoint.load_resume``, whose resharding to another world size and refusal of a one-process state are
    tested on SFT (test_sharded_state_resumes_in_one_process_and_the_reverse_fails_clearly)."""
    killed = torchrun(2, "align", str(tmp_path / "a"), "--steps", "2", "--kill-after", "2")
    assert killed.returncode != 0  # rank 1 SIGKILLed itself at step 2 (state saved at step 1)
    assert (tmp_path / "a" / "resume" / "policy" / "sharded.json").is_file()
    assert (tmp_path / "a" / "resume" / "discriminator" / "sharded.json").is_file()
    resumed = torchrun(2, "align", str(tmp_path / "a"), "--steps", "2")
    _ok(resumed)
    assert "align: resumed from step 1/2" in resumed.stdout
    for name in ("weights", "disc"):  # same world size: bit for bit
        assert max_diff(load_file(str(tmp_path / "a" / f"{name}.safetensors")),
                        load_file(str(align_runs[2] / f"{name}.safetensors"))) == 0.0, name


def test_colocated_engine_gets_the_whole_policy_on_every_rank_once_per_step(batch_runs):
    """Two gloo ranks of RL through the colocated path with a real generator (rollout_engine hf_colocated: each
    rank's transformers copy built from the input checkpoint) behind a recording test double (tests.fakes; it
    proves what prism-lab hands over, nothing about vLLM): each rank's engine gets every parameter of the sharded
    policy, whole, under the checkpoint's names, in the same order on both ranks, once per step, between waking
    its weights and its KV cache; the second step's sync carries the weights the first step trained. After a
    last sync the copy holds the policy's full weights exactly and samples the plain HF engine's tokens for the
    same seed, and the RL run through it logs the plain HF engine's metrics and ends at its weights (same init,
    same seeds)."""
    tmp_path = batch_runs[2] / "colocate"  # the 2-process batch's job (tests/dist/worker.py BATCH)
    one_step = ["wake_weights", "sync", "wake_kv_cache", "generate", "sleep"]
    events = [json.loads((tmp_path / f"events_rank{r}.json").read_text()) for r in (0, 1)]
    received = [load_file(str(tmp_path / f"received_rank{r}.safetensors")) for r in (0, 1)]
    for ev in events:
        assert ev["phases"] == ["sleep", *one_step, *one_step, *one_step]  # two steps, then the last sync
    assert events[0]["order"] == events[1]["order"] and len(events[0]["order"]) == 3
    names = events[0]["order"][0]
    assert names == events[0]["order"][1] == events[0]["order"][2] and len(set(names)) == len(names)
    assert sorted(names) == sorted(load_file(str(tmp_path / "hf" / "model.safetensors")))  # what vLLM loads
    init = load_file(str(tmp_path / "init.safetensors"))
    step1 = load_file(str(tmp_path / "step1.safetensors"))
    final = load_file(str(tmp_path / "weights.safetensors"))
    assert max_diff(step1, init) > 20 * ATOL and max_diff(final, step1) > 20 * ATOL  # both steps trained
    for got in received:
        assert got.keys() == received[0].keys()
        for k, expected in ((0, init), (1, step1), (2, final)):
            for name in names:
                t = got[f"{k}/{name}"]
                assert t.dtype == torch.float32 and t.shape == expected[name].shape  # whole, not a shard
                assert torch.equal(t, expected[name]), (k, name)
    for r, ev in enumerate(events):
        copy = load_file(str(tmp_path / f"engine_rank{r}.safetensors"))
        assert copy.keys() == final.keys() and all(torch.equal(copy[k], final[k]) for k in final)
        mine, theirs = ev["generated"]
        assert mine == theirs
        for a, b in zip(*ev["logprobs"]):
            assert a == pytest.approx(b, abs=1e-5)
        colocated, hf = ev["metrics"]["hf_colocated"], ev["metrics"]["hf"]
        assert len(colocated) == len(hf) == 2
        for a, b in zip(colocated, hf):
            for key in b:
                if not key.startswith(("time/", "samples/s", "train_samples/s", "rollout/")):
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert ev["recompute_calls"] == [2, 0]  # like vLLM's, the copy's log-probs are recomputed by the trainer
    assert events[0]["generated"] != events[1]["generated"]  # each rank samples its own prompt with its own seed
    assert max_diff(final, load_file(str(tmp_path / "hf_weights.safetensors"))) < ATOL  # the same update
