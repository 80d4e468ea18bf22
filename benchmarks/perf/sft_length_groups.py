"""SFT step time with ``length_groups`` against one padded batch, side by side on the toy grid's data.

    python benchmarks/perf/sft_length_groups.py [--groups 4] [--steps 30] [--rounds 3] [--threads 1]

For each preset of the toy grid (tiny-s, tiny-m) and each training mixture (the base's caption + instruct rows,
SFT's public + teacher rows), the product's SFT loop runs ``--steps`` steps with ``length_groups: 1`` and with
``length_groups: --groups``, alternating for ``--rounds`` rounds from the same initial weights and the same data
order, so that machine noise falls on both alike. Prints the median seconds per step of each, their ratio, the
share of padded positions each feeds the model, and the largest weight difference after the first round (the
two runs take the same gradient up to float rounding). The toy grid uses 4 (docs/cpu_notes.md §14).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PRISM_LAB_WANDB", "disabled")

MIXTURES = {"base": ["caption", "instruct"], "sft": ["public", "teacher"]}


def padded_share(collate, examples, groups: int, batch_size: int, n_batches: int = 20) -> float:
    """Share of the positions fed to the model that are padding, over ``n_batches`` batches drawn as training
    draws them (a seeded permutation of the rows)."""
    order = random.Random(0).sample(range(len(examples)), n_batches * batch_size)
    fed = real = 0
    for k in range(n_batches):
        rows = [examples[i] for i in order[k * batch_size:(k + 1) * batch_size]]
        for b in collate.length_groups(rows, groups):
            fed += b["attention_mask"].numel()
            real += int(b["attention_mask"].sum())
    return 1.0 - real / fed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30, help="Optimizer steps per timed run.")
    ap.add_argument("--rounds", type=int, default=3, help="Alternating rounds of the two settings.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the toy grid gives each worker 1 on 2 cores).")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "prism-length-groups-bench")
    args = ap.parse_args()

    import torch

    from prism_lab.config.sft import SFTConfig
    from prism_lab.data.catalog import DataCatalog, synth_catalog
    from prism_lab.data.collate import SFTCollator
    from prism_lab.data.synth.config import SynthConfig
    from prism_lab.data.synth.files import SFT_CAPTION, SFT_INSTRUCT, load_manifest
    from prism_lab.data.synth.generate import generate
    from prism_lab.harness.planning import load_grid
    from prism_lab.stages.sft import build_policy, load_examples
    from prism_lab.trainers.sft import train_sft

    torch.set_num_threads(args.threads)
    grid = load_grid(REPO / "experiments" / "toy.yaml")
    data_dir = args.out / "data"
    if not (data_dir / "manifest.json").exists():
        generate(SynthConfig.model_validate(grid.spec.data["synth"]), data_dir, overwrite=True)
    files = load_manifest(data_dir)["files"]
    synth_catalog("data", caption=SFT_CAPTION in files, instruct=SFT_INSTRUCT in files).save(args.out)
    catalog = DataCatalog.load(args.out)
    print(f"{'preset':8} {'mixture':8} {'s/step x1':>10} {'s/step xG':>10} {'ratio':>6} {'pad x1':>7} {'pad xG':>7} "
          f"{'max |dw|':>9}")
    for preset in dict.fromkeys(grid.spec.models.values()):
        for mixture, datasets in MIXTURES.items():
            fields = {**grid.spec.stages["sft"], "model": preset, "datasets": datasets, "max_steps": args.steps,
                      "epochs": 1000, "threads": args.threads, "log_every": args.steps, "warmup_ratio": 0.0}
            one = SFTConfig.model_validate({**fields, "length_groups": 1})
            grouped = SFTConfig.model_validate({**fields, "length_groups": args.groups})
            examples = load_examples(catalog, datasets)
            init, processor, _ = build_policy(one, catalog)
            times: dict[int, list[float]] = {1: [], args.groups: []}
            weights = {}
            for r in range(args.rounds):
                for cfg in (one, grouped) if r % 2 == 0 else (grouped, one):
                    model = copy.deepcopy(init)
                    with contextlib.redirect_stdout(io.StringIO()):  # the loop's own log lines
                        res = train_sft(model, processor, examples, cfg, progress=False)
                    times[cfg.length_groups].append(res.train_s / res.steps)
                    if r == 0:
                        weights[cfg.length_groups] = model.state_dict()
            diff = max(float((weights[1][k] - w).abs().max()) for k, w in weights[args.groups].items())
            collate = SFTCollator(processor, max_length=one.max_length)
            t1, tg = statistics.median(times[1]), statistics.median(times[args.groups])
            print(f"{preset:8} {mixture:8} {t1:10.3f} {tg:10.3f} {tg / t1:6.2f} "
                  f"{padded_share(collate, examples, 1, one.batch_size):7.2f} "
                  f"{padded_share(collate, examples, args.groups, one.batch_size):7.2f} {diff:9.1e}", flush=True)


if __name__ == "__main__":
    main()
