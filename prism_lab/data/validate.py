"""Read every local dataset file of a grid once, fully, before any stage runs.

The readers are the stages' own (sft_json, rl_parquet, warmup_jsonl, bench_tsv), so what passes here
is what the stages will read: every row's fields, every image's header (found, decodable, within
``images.MAX_IMAGE_PIXELS``, inside its root). A DataError names the file, the row or line, and the
field. Each check is tagged with the grid field it belongs to, so that the caller can say where in the
grid the file was named.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from prism_lab.errors import DataError

#: Bump when the checks change: data that passed older checks is read again.
VALIDATION_VERSION = 1


def local_data_checks(local: dict[str, Any], bench_files: list[tuple[Path, bool]], *, require_teacher: bool
                      ) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(grid field, check) pairs for the `data.local` section ``local`` (absolute paths) and the
    benchmark files the grid's benchmarks resolve to: (path, is a VLMEvalKit TSV); other benchmark
    files (lm-eval data) are checked to exist, their task reads them."""
    from prism_lab.data.bench_tsv import read_benchmark_tsv
    from prism_lab.data.rl_parquet import read_rl_parquet
    from prism_lab.data.sft_json import read_sft_json
    from prism_lab.data.warmup_jsonl import read_warmup_jsonl

    root = local.get("image_root")
    if root is not None and not Path(root).is_dir():
        yield "image_root", _fail(f"{root}: image_root: expected a directory")
    for i, path in enumerate(local.get("sft") or []):
        yield f"sft[{i}]", lambda path=path: read_sft_json(_existing(path, "SFT data file"), image_root=root)
    if local.get("heldout"):
        yield "heldout", lambda: read_sft_json(_existing(local["heldout"], "held-out SFT file"), image_root=root)
    if local.get("rl"):
        yield "rl", lambda: read_rl_parquet(_existing(local["rl"], "RL parquet"), image_root=root,
                                            require_teacher=require_teacher)
    if local.get("warmup"):
        yield "warmup", lambda: read_warmup_jsonl(_existing(local["warmup"], "warmup file"), image_root=root)
    for path, is_tsv in bench_files:
        if is_tsv:
            yield "bench_dir", lambda path=path: read_benchmark_tsv(_existing(path, "benchmark TSV"))
        else:
            yield "bench_dir", lambda path=path: _existing(path, "benchmark data file")


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} not found" + (" (it is a directory)" if p.is_dir() else ""))
    return p


def _fail(message: str) -> Callable[[], None]:
    def check() -> None:
        raise DataError(message)

    return check
