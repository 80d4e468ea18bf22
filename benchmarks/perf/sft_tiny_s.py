"""SFT of tiny-s on the synthetic task: the accuracy curve within a wall-clock training budget.

    python benchmarks/perf/sft_tiny_s.py [--minutes 10] [--threads 2] [--max-steps 3500] [--eval-every 500]

Uses the toy grid's data and SFT settings (experiments/toy.yaml) and the product's own SFT loop and
evaluation. Every `--eval-every` steps the policy is saved and evaluated greedily on the held-out
benchmarks (first `--limit` items each); evaluation time is excluded from the training clock. Target
(issue: embedded default): >= 0.5 accuracy on synth-reasoning and >= 0.95 format-valid rate within
10 minutes of training on 2 cores, without saturating the benchmarks (headroom for RL).
Writes curve.csv in --out and prints the curve.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PRISM_LAB_WANDB", "disabled")


class _Done(Exception):
    pass


def image_use_gap(model, processor, examples, n: int = 64) -> tuple[float, float]:
    """(loss, loss with every image swapped for the next row's) on ``n`` teacher rows: a policy that
    reads the image loses accuracy when the images are swapped; one that ignores them does not."""
    import torch

    from prism_lab.data.collate import SFTCollator

    rows = [e for e in examples if "teacher" in str(e.source)][:n]
    batch = SFTCollator(processor, max_length=512)(rows)
    per_image = int(batch["image_grid_thw"][0].prod())
    model.eval()
    with torch.no_grad():
        real = model(**batch).loss.item()
        swapped = model(**{**batch, "pixel_values": torch.roll(batch["pixel_values"], per_image, 0)}).loss.item()
    model.train()
    return real, swapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--limit", type=int, default=200, help="Items per benchmark (the toy grid writes 200).")
    ap.add_argument("--preset", default="tiny-s")
    ap.add_argument("--max-steps", type=int, default=3500, help="Length of the LR schedule (warmup + cosine).")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="Override a toy-grid setting, e.g. synth.image_size=128 or sft.lr=1e-3 (repeatable).")
    ap.add_argument("--preset-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="Change a field of the preset for this run, e.g. num_hidden_layers=4 (repeatable).")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "prism-sft-bench")
    args = ap.parse_args()

    import torch

    from prism_lab.config.eval import EvalConfig
    from prism_lab.config.sft import SFTConfig
    from prism_lab.data.catalog import DataCatalog, synth_catalog
    from prism_lab.data.synth.config import SynthConfig
    from prism_lab.data.synth.files import SFT_CAPTION, load_manifest
    from prism_lab.data.synth.generate import generate
    from prism_lab.eval.run import evaluate_checkpoint
    from prism_lab.harness.planning import load_grid
    from prism_lab.models import save_policy
    from prism_lab.stages.sft import build_policy, load_examples
    from prism_lab.trainers.sft import train_sft

    torch.set_num_threads(args.threads)
    import yaml

    grid = load_grid(REPO / "experiments" / "toy.yaml")
    for item in args.set:
        path, _, value = item.partition("=")
        section, _, field = path.partition(".")
        target = grid.spec.data["synth"] if section == "synth" else grid.spec.stages[section]
        target[field] = yaml.safe_load(value)
    data_dir = args.out / "data"
    if not (data_dir / "manifest.json").exists():
        generate(SynthConfig.model_validate(grid.spec.data["synth"]), data_dir, overwrite=True)
    synth_catalog("data", caption=SFT_CAPTION in load_manifest(data_dir)["files"]).save(args.out)
    if args.preset_set:
        import dataclasses

        from prism_lab.models.presets import PRESETS

        changes = {k: yaml.safe_load(v) for k, v in (item.partition("=")[::2] for item in args.preset_set)}
        base = PRESETS.get(args.preset)
        args.preset = f"{args.preset}+custom"
        PRESETS.add(args.preset, dataclasses.replace(base, name=args.preset, **changes))
    catalog = DataCatalog.load(args.out)
    sft_fields = {**grid.spec.stages["sft"], "model": args.preset, "max_steps": args.max_steps, "epochs": 1000, "max_minutes": None,
                  "threads": args.threads, "log_every": 50}
    cfg = SFTConfig.model_validate(sft_fields)
    examples = load_examples(catalog, cfg.datasets)
    model, processor, _ = build_policy(cfg, catalog)
    benches = list(grid.spec.benchmarks)
    eval_cfg = EvalConfig(benchmarks=benches, batch_size=50, limit=args.limit)
    budget_s = args.minutes * 60
    t0 = time.monotonic()
    eval_s = 0.0
    rows: list[dict] = []
    last_loss: dict[str, float] = {}

    def evaluate(step: int) -> None:
        nonlocal eval_s
        e0 = time.monotonic()
        train_s = e0 - t0 - eval_s
        model.eval()
        ckpt = args.out / "ckpt"
        save_policy(model, processor, ckpt)
        from prism_lab.prompts import Prompting

        Prompting(system_prompt=False, yesno_instruction=False).write(ckpt)
        res = evaluate_checkpoint(ckpt, benches, eval_cfg, bench_dir=catalog.bench_dir, cache_dir=None,
                                  checkpoint_key=f"bench-step-{step}", progress=False)
        model.train()
        row = {"step": step, "train_s": round(train_s, 1), "loss": round(last_loss.get("loss", float("nan")), 4)}
        for b in benches:
            row[f"{b}/acc"] = round(res["benchmarks"][b]["accuracy"], 3)
            row[f"{b}/format"] = round(res["benchmarks"][b]["format_rate"], 3)
        rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        eval_s += time.monotonic() - e0

    last_step = {"step": 0}

    def on_step(step: int, values: dict) -> None:
        last_step["step"] = step
        if "loss" in values:
            last_loss["loss"] = values["loss"]
        train_s = time.monotonic() - t0 - eval_s
        if step % args.eval_every == 0 or train_s >= budget_s:
            evaluate(step)
        if train_s >= budget_s:
            raise _Done

    print(f"SFT {args.preset} on {len(examples)} examples, {args.threads} threads, budget {args.minutes} min of training")
    try:
        train_sft(model, processor, examples, cfg, on_step=on_step, progress=False)
    except _Done:
        pass
    if not rows or rows[-1]["step"] != last_step["step"]:
        evaluate(last_step["step"])
    real, swapped = image_use_gap(model, processor, examples)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "curve.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    best = max(rows, key=lambda r: r["synth-reasoning/acc"])
    final = rows[-1]
    print(f"final (train {final['train_s']}s, step {final['step']}): " + ", ".join(
        f"{b} acc {final[f'{b}/acc']:.3f} format {final[f'{b}/format']:.3f}" for b in benches))
    print(f"teacher-row loss {real:.4f}, with each image swapped for another row's {swapped:.4f} "
          f"(gap {swapped - real:+.4f}; about 0 means the policy ignores the image)")
    print(f"best synth-reasoning acc {best['synth-reasoning/acc']:.3f} at {best['train_s']}s; curve: {args.out / 'curve.csv'}")


if __name__ == "__main__":
    main()
