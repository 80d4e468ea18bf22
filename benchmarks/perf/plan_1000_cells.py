"""Planning speed: load and plan a 1,000-cell grid (target: under 2 s on a 2-core CPU).

    python benchmarks/perf/plan_1000_cells.py

The grid is the toy grid with 2 sizes x 5 algorithms x 2 alignments x 50 seeds = 1,000 cells.
Prints the wall time of load_grid + build_plan (min and median of 5 runs, in one process) and the
number of distinct stage runs. No stage is executed and no ledger is written.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from prism_lab.harness.planning import build_plan, load_grid  # noqa: E402


def main() -> None:
    grid = yaml.safe_load((REPO / "experiments" / "toy.yaml").read_text())
    grid["name"] = "plan-bench"
    grid["axes"] = {"size": ["4b", "8b"], "algorithm": ["grpo", "dapo", "gspo", "gspo_token", "dr_grpo"],
                    "alignment": ["none", "prism"], "seed": list(range(50))}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.yaml"
        path.write_text(yaml.safe_dump(grid))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            plan = build_plan(load_grid(path))
            times.append(time.perf_counter() - t0)
    counts = {k: plan.count(k) for k in ("data", "sft", "disc_warmup", "align", "rl", "eval")}
    print(f"cells: {len(plan.cells)}  stage runs: {len(plan.runs)}  {counts}")
    print(f"load_grid + build_plan: min {min(times):.3f}s  median {statistics.median(times):.3f}s  (target < 2 s)")


if __name__ == "__main__":
    main()
