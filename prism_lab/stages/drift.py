"""The eval stage's drift measurements (``trainers/drift.py``) for one checkpoint of a chain.

Ledger metrics (step 0 of the eval run), all per token and in nats:

    drift/teacher_nll          held-out teacher NLL of the checkpoint (distance to the supervision)
    drift/base_teacher_nll     the same for the chain's base (the picture's starting point)
    drift/kl_from_base         KL(base || checkpoint) on the base's own samples of the held-out prompts
    drift/disc_gap_caption     discriminator margin teacher − checkpoint (chains with a discriminator)
    drift/disc_gap_cot

The held-out rows are the data catalog's ``sft_heldout`` (never trained on). The base is
``lineage.chain_start``; its samples, log-probs and teacher NLL are computed once per (base, held-out
file, settings) and cached under ``<root>/cache/drift``, so every checkpoint of every chain from that
base reuses them. A chain without a known base, or data without held-out rows, logs no drift metrics
(one log line says why).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prism_lab.stages.lineage import chain_discriminator, chain_start

if TYPE_CHECKING:
    from prism_lab.harness.context import StageContext

CACHE_SUBDIR = Path("cache") / "drift"
SEED = 1234  # base samples: a fixed stream, so every checkpoint is compared on the same samples


def _heldout(ctx: StageContext, limit: int) -> tuple[list[Any], str] | None:
    """(the first ``limit`` held-out teacher rows, the file's sha256), or None when the data has none."""
    from prism_lab.data.catalog import DataCatalog
    from prism_lab.data.sft_json import read_sft_json
    from prism_lab.eval.predictions import file_sha256

    if "data" not in ctx.inputs:
        return None
    cat = DataCatalog.load(ctx.input("data").path)
    if not cat.sft_heldout:
        return None
    path = Path(cat.sft_heldout[0])
    return read_sft_json(path, image_root=cat.image_root)[:limit], file_sha256(path)


def _base_cache(ctx: StageContext, identity: str, sha: str, cfg: Any) -> Path:
    h = hashlib.sha256(json.dumps([identity, sha, cfg.drift_items, cfg.drift_max_new_tokens, SEED]).encode())
    return Path(ctx.root) / CACHE_SUBDIR / f"{h.hexdigest()[:32]}.json"


def _base_reference(ctx: StageContext, base_dir: Path, cache: Path, examples: list, prompts: list,
                    cfg: Any) -> dict[str, Any]:
    """The base's samples, their log-probs under the base and the base's teacher NLL (cached)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from prism_lab.models import load_policy
    from prism_lab.trainers.drift import base_samples, sequence_logprobs, teacher_nll

    base, processor = load_policy(base_dir)
    samples = base_samples(base, processor, prompts, max_new_tokens=cfg.drift_max_new_tokens, seed=SEED,
                           batch_size=cfg.batch_size)
    ref = {"samples": samples, "logprobs": sequence_logprobs(base, processor, prompts, samples,
                                                             batch_size=cfg.batch_size),
           "teacher_nll": teacher_nll(base, processor, examples, batch_size=cfg.batch_size)["teacher_nll"]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(ref))
    os.replace(tmp, cache)
    return ref


def measure_drift(ctx: StageContext, cfg: Any, checkpoint_dir: Path) -> dict[str, float]:
    """The ``drift/*`` metrics of the eval run's checkpoint (empty when they cannot be measured)."""
    held = _heldout(ctx, cfg.drift_items)
    if held is None:
        ctx.log.info("drift: no held-out teacher rows in the data (sft_heldout); not measured")
        return {}
    examples, sha = held
    from prism_lab.models import load_policy
    from prism_lab.trainers.drift import (
        heldout_prompts,
        kl_estimate,
        sequence_logprobs,
        teacher_nll,
    )

    model, processor = load_policy(checkpoint_dir)
    out = {"drift/teacher_nll": teacher_nll(model, processor, examples, batch_size=cfg.batch_size)["teacher_nll"]}
    origin = chain_start(ctx.ledger, ctx.key)
    if origin is None:
        ctx.log.info("drift: the chain's base checkpoint is unknown or unavailable; KL from base not measured")
    else:
        prompts = heldout_prompts(examples)
        ref = _base_reference(ctx, origin.path, _base_cache(ctx, origin.identity, sha, cfg), examples, prompts, cfg)
        mine = sequence_logprobs(model, processor, prompts, ref["samples"], batch_size=cfg.batch_size)
        out["drift/kl_from_base"] = kl_estimate(ref["logprobs"], mine)["kl_per_token"]
        out["drift/base_teacher_nll"] = ref["teacher_nll"]
    disc_dir = chain_discriminator(ctx.ledger, ctx.key)
    if disc_dir is not None:
        from prism_lab.models.discriminator import load_discriminator
        from prism_lab.trainers.drift import disc_gaps

        disc = load_discriminator(disc_dir, policy_processor=processor)
        system = next((m["content"] for m in examples[0].messages if m.get("role") == "system"), None)
        gaps = disc_gaps(disc, model, processor, examples, max_new_tokens=cfg.drift_max_new_tokens, seed=SEED,
                         system_prompt=system, batch_size=cfg.batch_size)
        out.update({f"drift/{k}": v for k, v in gaps.items()})
    ctx.log.info("drift: %s", ", ".join(f"{k.removeprefix('drift/')} {v:.4f}" for k, v in out.items()))
    return out
