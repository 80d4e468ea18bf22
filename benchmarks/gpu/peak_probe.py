"""Run a module as ``python -m`` would, and at exit write this process's peak CUDA memory to a file.

    python benchmarks/gpu/peak_probe.py MODULE [ARGS...]      (PRISM_GPU_PEAK_DIR=DIR)

``benchmarks/gpu/check.py`` starts each stage run through it (under torchrun: every rank) so that the stage
code stays as it is: ``DIR/peak-<pid>.json`` holds the rank, ``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` in bytes (the largest over the visible devices). Nothing is written when the process
never used CUDA or ended by ``os._exit``.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path


def record() -> dict | None:
    """This process's CUDA peaks (None without CUDA use); written to ``$PRISM_GPU_PEAK_DIR`` when set."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    devices = range(torch.cuda.device_count())
    rec = {"pid": os.getpid(), "rank": int(os.environ.get("RANK", "0")),
           "allocated": max(torch.cuda.max_memory_allocated(d) for d in devices),
           "reserved": max(torch.cuda.max_memory_reserved(d) for d in devices)}
    out = os.environ.get("PRISM_GPU_PEAK_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"peak-{os.getpid()}.json").write_text(json.dumps(rec))
    return rec


def read_peaks(directory: Path) -> dict[str, float] | None:
    """The largest ``allocated`` and ``reserved`` (bytes) over the ranks that wrote into ``directory``."""
    recs = [json.loads(p.read_text()) for p in sorted(Path(directory).glob("peak-*.json"))]
    if not recs:
        return None
    return {k: float(max(r[k] for r in recs)) for k in ("allocated", "reserved")} | {"ranks": len(recs)}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: peak_probe.py MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    atexit.register(record)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
