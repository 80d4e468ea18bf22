"""Where VLMEvalKit reads a benchmark (``$LMUData/<name>.tsv``): an official, complete file is used in
place; a synthetic benchmark, a local variant or a subset of rows is linked or written into a private
``LMUData`` under the work directory."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def subset_tsv(src: Path, dst: Path, keep: set[str]) -> int:
    """Copy the rows of ``src`` whose index is in ``keep`` to ``dst``; short image references (the index
    of another row) are resolved first, so kept rows never point at dropped ones."""
    import csv

    import pandas as pd

    df = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    if "image" in df.columns:
        by_idx = dict(zip(df["index"].astype(str), df["image"]))
        df["image"] = [by_idx.get(v, v) if 0 < len(v) <= 64 else v for v in df["image"]]
    sub = df[df["index"].astype(str).isin(keep)]
    sub.to_csv(dst, sep="\t", index=False, lineterminator="\n")
    return len(sub)


def layout_benchmark(req: Mapping[str, Any], spec: Any, work: Path) -> tuple[str, Path]:
    """(dataset name, LMUData root) for a request (see step 1 of the module doc)."""
    from prism_lab.eval.vlmeval.datasets import check_benchmark_file

    tsv = check_benchmark_file(spec, req["tsv"], check_md5=not req.get("indices"))
    indices = req.get("indices")
    official = spec.source == "vlmevalkit" and spec.vlmeval_name and tsv.stem == spec.vlmeval_name
    if official and not indices:
        return tsv.stem, tsv.parent
    root = work / "LMUData"
    root.mkdir(parents=True, exist_ok=True)
    if spec.source == "synth":
        name = spec.name
    else:
        name = tsv.stem if not official else f"{tsv.stem}_prismsub"
    dst = root / f"{name}.tsv"
    if indices:
        subset_tsv(tsv, dst, {str(i) for i in indices})
    else:
        try:
            dst.symlink_to(tsv.resolve())
        except OSError:
            shutil.copyfile(tsv, dst)
    return name, root
