"""Vision-tower pre-training of a random-init policy: tag every image with how many objects of each kind it shows.

A real Qwen3-VL starts from a vision encoder that was pre-trained on image-text pairs before any language-model
stage. A tiny tower trained from scratch only through the language model's caption loss learns the colours of the
synthetic scenes but not their shapes, even in 1,500 caption steps (docs/cpu_notes.md §9). With this direct signal
(one count classifier per (colour, shape) kind on the tower's own outputs) it learns both in about 1,500 steps.
The classifier head is thrown away afterwards: only the tower (patch embedding, blocks, merger and deepstack
mergers) keeps what it learned.

Targets come from the rows' ``meta.scene`` (the synthetic generator writes it on every caption row). The phase
is deterministic given ``seed``; it is short, so a run killed inside it redoes it from the start (the base stage
keeps its result once it ends).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from prism_lab.data.sft_json import SFTExample
from prism_lab.errors import DataError
from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.common import make_cosine_scheduler
from prism_lab.trainers.recipe import StepPlan, run_steps

Kind = tuple[str, str]


@dataclass(frozen=True)
class VisionTagSettings:
    steps: int
    lr: float
    batch_size: int
    seed: int
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 1.0  # constant after warmup: a decaying rate left the tower in its plateau
    weight_decay: float = 0.01
    max_count: int = 6
    heldout: int = 256
    log_every: int = 100


def scene_kinds(examples: Sequence[SFTExample]) -> list[Kind]:
    """Every (colour, shape) kind the rows' scenes draw, sorted: the classifier's outputs."""
    kinds: set[Kind] = set()
    for ex in examples:
        scene = ex.meta.get("scene")
        if not isinstance(scene, list):
            raise DataError(f"{ex.source or 'SFT file'} row {ex.row}: meta.scene: expected the list of drawn "
                            "objects (synthetic caption rows have it); the vision phase needs it")
        kinds.update((str(o["colour"]), str(o["shape"])) for o in scene)
    return sorted(kinds)


def count_targets(scene: Sequence[dict[str, Any]], kinds: Sequence[Kind], max_count: int) -> list[int]:
    """How many objects of each kind ``scene`` has, capped at ``max_count``."""
    counts = {k: 0 for k in kinds}
    for o in scene:
        counts[(str(o["colour"]), str(o["shape"]))] += 1
    return [min(counts[k], max_count) for k in kinds]


class TagHead(torch.nn.Module):
    """Mean of an image's merged tokens (plus its deepstack features) -> a count distribution per kind."""

    def __init__(self, hidden: int, n_kinds: int, max_count: int) -> None:
        super().__init__()
        self.shape = (n_kinds, max_count + 1)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, 256), torch.nn.GELU(),
                                       torch.nn.Linear(256, n_kinds * (max_count + 1)))

    def forward(self, features: torch.Tensor, n_images: int) -> torch.Tensor:
        pooled = features.view(n_images, features.shape[0] // n_images, -1).mean(1)
        return self.mlp(pooled).view(n_images, *self.shape)


def tag_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every (image, kind): logits (B, K, C+1), targets (B, K) of counts."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _tower_features(visual, processor, images) -> tuple[torch.Tensor, int]:
    device = next(visual.parameters()).device
    px = processor.image_processor(images=images, return_tensors="pt")
    out = visual(px["pixel_values"].to(device), grid_thw=px["image_grid_thw"].to(device))
    feats = out.pooler_output
    for extra in out.deepstack_features or ():
        feats = feats + extra
    return feats, len(images)


def _accuracy(visual, head, processor, examples, targets) -> dict[str, float]:
    """Exact-count and presence accuracy of the head over ``examples`` (no gradients)."""
    right = present = total = 0
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            chunk = examples[i:i + 64]
            feats, n = _tower_features(visual, processor, [ex.load_images()[0] for ex in chunk])
            pred = head(feats, n).argmax(-1).cpu()
            want = targets[i:i + 64]
            right += int((pred == want).sum())
            present += int(((pred > 0) == (want > 0)).sum())
            total += want.numel()
    return {"count_acc": right / total, "presence_acc": present / total}


def train_vision_tags(model, processor, examples: Sequence[SFTExample], cfg: VisionTagSettings, *,
                      log_metrics: Callable[[int, dict[str, float]], None] | None = None,
                      heartbeat: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``model``'s vision tower in place for ``cfg.steps`` steps; returns a summary with held-out accuracy.

    The last ``cfg.heldout`` rows (at most a tenth of them) are kept out of training and measure the tower at the end.
    """
    kinds = scene_kinds(examples)
    targets = torch.tensor([count_targets(ex.meta["scene"], kinds, cfg.max_count) for ex in examples])
    n_train = len(examples) - min(cfg.heldout, len(examples) // 10)
    visual = model.model.visual
    torch.manual_seed(cfg.seed)
    head = TagHead(model.config.text_config.hidden_size, len(kinds), cfg.max_count)
    head.to(next(visual.parameters()).device)
    params = [p for p in visual.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_cosine_scheduler(optimizer, total_steps=cfg.steps, warmup_ratio=cfg.warmup_ratio,
                                     min_lr_ratio=cfg.min_lr_ratio)
    order = torch.Generator().manual_seed(cfg.seed)
    visual.train()
    t0, window = time.monotonic(), []

    def step(_: int) -> dict[str, float]:
        idx = torch.randint(n_train, (cfg.batch_size,), generator=order).tolist()
        feats, n = _tower_features(visual, processor, [examples[i].load_images()[0] for i in idx])
        loss = tag_loss(head(feats, n), targets[idx].to(feats.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        window.append(loss.item())
        return {}

    def record(done: int, _: dict[str, float]) -> dict[str, float]:
        mean = sum(window) / len(window)
        window.clear()
        if not math.isfinite(mean):
            raise FloatingPointError(f"vision phase: loss is {mean} at step {done}")
        print(f"[vision] step {done}/{cfg.steps} loss {mean:.4f} lr {scheduler.get_last_lr()[0]:.6f} "
              f"elapsed {time.monotonic() - t0:.0f}s", flush=True)
        return {"vision/loss": mean}

    trainer = SimpleNamespace(step=step, record=record, save=lambda done: None)
    # every rank trains the same unsharded tower on the same batches: no collectives (SINGLE)
    run_steps(trainer, StepPlan(total=cfg.steps, log_every=cfg.log_every), dist_.SINGLE, log=log_metrics,
              heartbeat=heartbeat)
    visual.eval()
    held = list(examples[n_train:])
    acc = _accuracy(visual, head, processor, held, targets[n_train:]) if held else {}
    if log_metrics is not None and acc:
        log_metrics(cfg.steps, {f"vision/heldout_{k}": v for k, v in acc.items()})
    print(f"[vision] {len(kinds)} kinds; held-out count accuracy {acc.get('count_acc', float('nan')):.3f}, "
          f"presence accuracy {acc.get('presence_acc', float('nan')):.3f}", flush=True)
    return {"steps": cfg.steps, "kinds": len(kinds), "heldout": len(held), **acc,
            "wall_s": round(time.monotonic() - t0, 2)}
