"""The `sft` stage: supervised fine-tuning of the policy (stage 1).

Inputs: ``data`` (a `data` run's artifact with catalog.json) and, after a `base` stage, ``policy`` (the
checkpoint SFT starts from). Output: ``<artifact>/model``, an HF
checkpoint directory (weights, config, processor, tokenizer, chat template) that later stages load
with ``load_policy``. Without a ``policy`` input, for a tiny preset the tokenizer is trained here on the task corpus and the
policy is built from random init, and that initial model is also saved to ``<artifact>/base`` (the
chain's base for the drift measurements, see ``stages/lineage.py``); for a local directory or hub id the
checkpoint is fine-tuned.

The resumable state lives in ``<out_dir>/resume`` while the run is in progress (the in-progress
directory survives restarts) and is deleted when training ends.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prism_lab.config.sft import SFTConfig
from prism_lab.data.catalog import DataCatalog
from prism_lab.data.sft_json import SFTExample, read_sft_json
from prism_lab.errors import ConfigError, DataError
from prism_lab.prompts import SYSTEM_PROMPT
from prism_lab.stages.artifacts import BASE_SUBDIR, MODEL_SUBDIR, resume_dir

if TYPE_CHECKING:  # the harness hands every runner its context; stages never import the harness
    from prism_lab.harness.context import StageContext

log = logging.getLogger(__name__)



def _message_texts(messages) -> Iterator[str]:
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            yield content.replace("<image>", "")
        elif isinstance(content, list):
            for item in content:
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    yield item["text"]


def task_corpus(catalog: DataCatalog, datasets: Sequence[str]) -> list[str]:
    """Texts the tiny tokenizer is trained on, in a fixed order: the system prompt, every message of the
    catalog's SFT files of ``datasets`` (those of the stage that builds the model), then the RL prompts and
    teacher fields. A base stage trains it on its own files, so the vocabulary of the model that plays
    Qwen3-VL-Instruct does not depend on the SFT mixture (a change of the public rows changed every base
    before, by up to ~8 points: docs/cpu_notes.md §10, §12)."""
    texts = [SYSTEM_PROMPT]
    for path in catalog.sft_files(list(datasets)):
        for ex in read_sft_json(path, image_root=catalog.image_root, check_images=False):
            texts.extend(_message_texts(ex.messages))
    if catalog.rl and Path(catalog.rl).is_file():
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(catalog.rl).names
            cols = [c for c in ("prompt", "teacher_caption", "teacher_cot") if c in names]
            rows = pq.read_table(catalog.rl, columns=cols).to_pylist() if cols else []
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{catalog.rl}: could not read the RL parquet for the tokenizer corpus ({exc})") from None
        for row in rows:
            prompt = row.get("prompt")
            if isinstance(prompt, list):
                texts.extend(_message_texts(p for p in prompt if isinstance(p, dict)))
            for k in ("teacher_caption", "teacher_cot"):
                if isinstance(row.get(k), str) and row[k]:
                    texts.append(row[k])
    return [t for t in texts if t]


def load_examples(catalog: DataCatalog, datasets: list[str]) -> list[SFTExample]:
    files = catalog.sft_files(list(datasets))
    if not files:
        raise DataError(f"the data catalog has no SFT files for datasets {list(datasets)}")
    out: list[SFTExample] = []
    for f in files:
        out += read_sft_json(f, image_root=catalog.image_root)
    if not out:
        raise DataError(f"the SFT files {', '.join(map(str, files))} have no rows")
    return out


def build_policy(cfg: SFTConfig, catalog: DataCatalog):
    """(model, processor, info): a fresh tiny policy with a locally trained tokenizer, or a checkpoint."""
    from prism_lab.models import (
        build_tiny_policy,
        build_tokenizer,
        load_policy,
        resolve_model_ref,
    )

    if not cfg.model:
        raise ConfigError("sft.model is empty: set a preset name (e.g. tiny-s), a checkpoint directory or a hub id")
    ref = resolve_model_ref(cfg.model)
    if ref.kind == "preset" and ref.preset is not None and ref.preset.family == "tiny":
        t0 = time.monotonic()
        tokenizer = build_tokenizer(task_corpus(catalog, cfg.datasets), vocab_size=cfg.tokenizer_vocab_size, seed=cfg.seed)
        model, processor = build_tiny_policy(ref.preset, tokenizer, seed=cfg.seed)
        return model, processor, {"model_source": "preset", "vocab_size": len(tokenizer),
                                  "tokenizer_s": round(time.monotonic() - t0, 2)}
    model, processor = load_policy(cfg.model, dtype=torch.float32)
    return model, processor, {"model_source": ref.kind}


def starting_policy(ctx: StageContext, cfg: SFTConfig, catalog: DataCatalog):
    """(model, processor, info) a training stage starts from: its ``policy`` input's checkpoint when it has one
    (SFT after a `base` stage), else ``cfg.model`` (build_policy)."""
    if "policy" not in ctx.inputs:
        return build_policy(cfg, catalog)
    from prism_lab.models import load_policy
    from prism_lab.stages.artifacts import checkpoint_dir_of

    start = checkpoint_dir_of(ctx.input("policy").path)
    model, processor = load_policy(start, dtype=torch.float32)
    return model, processor, {"model_source": ctx.input("policy").kind}


def run(ctx: StageContext) -> dict:
    from prism_lab.models import count_parameters, save_policy
    from prism_lab.prompts import Prompting
    from prism_lab.stages.finish import finish_stage
    from prism_lab.trainers.recipe import start_run
    from prism_lab.trainers.sft import train_sft

    cfg: SFTConfig = ctx.config  # type: ignore[assignment]
    env = start_run(cfg.resources)  # one process, or this rank of a torchrun run
    t0 = time.monotonic()
    catalog = DataCatalog.load(ctx.input("data").path)
    examples = load_examples(catalog, cfg.datasets)
    model, processor, info = starting_policy(ctx, cfg, catalog)
    if env.is_main and info["model_source"] == "preset" and not (ctx.out_dir / BASE_SUBDIR / "config.json").is_file():
        # a random-init preset exists nowhere else: keep it as the chain's base (stages/lineage.py); every
        # rank builds the same seeded model before any sharding, so rank 0's copy is the base
        save_policy(model, processor, ctx.out_dir / BASE_SUBDIR)
    params = count_parameters(model)
    if env.is_main:
        print(f"[sft] {cfg.model}: {params['total']:,} parameters ({params['vision']:,} vision); "
              f"{len(examples)} examples from {', '.join(cfg.datasets)}", flush=True)

    resume = resume_dir(ctx.out_dir)
    result = train_sft(model, processor, examples, cfg, resume_dir=resume, log_metrics=ctx.log_metrics,
                       heartbeat=ctx.heartbeat, env=env)
    if result.stopped_by == "time":  # the wall-clock budget (max_minutes) stopped it: the result depends on the machine
        ctx.log_metrics(result.steps, {"truncated": 1.0})
    # the prompt convention the model was trained with; evaluation and later stages follow it
    has_system = any(m.get("role") == "system" for ex in examples[:50] for m in ex.messages)

    def write() -> dict:
        (ctx.out_dir / "train_history.json").write_text(json.dumps(result.history, indent=1))
        return {**result.summary(), "n_examples": len(examples), "params": params["total"], "model_dir": MODEL_SUBDIR,
                "stage_wall_s": round(time.monotonic() - t0, 2), "processes": env.world_size, **info}

    return finish_stage(ctx.out_dir, env, write=write, policy=model, processor=processor,
                        prompting=Prompting(system_prompt=has_system, yesno_instruction=False), remove=[resume],
                        export_dtype=cfg.resources.export_dtype)
