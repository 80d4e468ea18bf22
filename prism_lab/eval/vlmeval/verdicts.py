"""Reading VLMEvalKit's scoring back: its metrics table as JSON records, and one verdict per row (from
its intermediate files, or its exact-matching MCQ rule for classes that write none)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def metrics_table(obj: Any) -> Any:
    """VLMEvalKit's metrics (DataFrame / dict) as JSON-able records."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return json.loads(obj.to_json(orient="records"))
    if isinstance(obj, dict):
        return json.loads(json.dumps(obj, default=str))
    return None if obj is None else str(obj)


def hits_from_files(work: Path, pred_file: Path) -> dict[str, bool]:
    """Per-row verdicts from VLMEvalKit's intermediate files (``hit`` or ``score`` by ``index``)."""
    from vlmeval.smp import load

    stem = pred_file.stem
    best: dict[str, bool] = {}
    for p in sorted(work.iterdir()):
        if not p.name.startswith(stem + "_") or p.suffix not in (".tsv", ".xlsx", ".csv", ".pkl", ".json"):
            continue
        try:
            data = load(str(p))
        except Exception:  # noqa: BLE001
            continue
        if not hasattr(data, "columns") or "index" not in data.columns:
            continue
        col = "hit" if "hit" in data.columns else ("score" if "score" in data.columns else None)
        if col is None:
            continue
        best = {str(i): bool(int(float(v))) if not isinstance(v, bool) else v
                for i, v in zip(data["index"], data[col])}
        if col == "hit":
            break
    return best


def mcq_hits(dataset: Any, records: Mapping[str, dict]) -> dict[str, bool]:
    """VLMEvalKit's exact-matching MCQ verdict (``can_infer``) for classes that write no per-row file."""
    from vlmeval.dataset.utils.multiple_choice import can_infer

    from prism_lab.eval.vlmeval.judge import row_options

    out = {}
    for row in dataset.data.to_dict(orient="records"):
        i = str(row["index"])
        opts = row_options(row)
        got = can_infer(records[i]["answer"], opts) if opts else None
        out[i] = bool(got) and str(got) == str(row.get("answer")).strip()
    return out
