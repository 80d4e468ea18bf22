"""The files of a generated synthetic data directory: their names, the manifest, and every text in them
(the corpus the local tokenizer is trained on)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prism_lab.prompts import SYSTEM_PROMPT

#: File names inside a generated data directory.
SFT_PUBLIC = "sft_public.json"
SFT_TEACHER = "sft_teacher.json"
SFT_CAPTION = "sft_caption.json"
SFT_INSTRUCT = "base_instruct.json"  # the base stage's question -> answer rows
SFT_HELDOUT = "sft_heldout.json"  # held-out teacher rows: drift measurements only, never trained on
RL_TRAIN = "rl_train.parquet"
WARMUP = "warmup_pairs.jsonl"
MANIFEST = "manifest.json"
BENCH_DIR = "bench"
BENCHMARKS = ("synth-perception", "synth-reasoning", "synth-hallusion")


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a generated data directory."""
    from prism_lab.errors import DataError

    p = Path(data_dir) / MANIFEST
    if not p.is_file():
        raise DataError(f"{p}: not found (is {data_dir} a generated synth data directory?)")
    return json.loads(p.read_text(encoding="utf-8"))


def corpus_texts(data_dir: str | Path) -> Iterator[str]:
    """Every system/question/response text in a generated directory (for training the tokenizer).

    ``<image>`` placeholders are removed (the processor replaces them with vision tokens). The system
    prompt is yielded once (always, since evaluation injects it by default).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    from prism_lab.data.synth.questions import format_mcq

    d = Path(data_dir)
    seen_system = {SYSTEM_PROMPT}
    yield SYSTEM_PROMPT

    def clean(t: str) -> str:
        return t.replace("<image>", "")

    def system_once(t: str) -> Iterator[str]:
        if t not in seen_system:
            seen_system.add(t)
            yield t

    for name in (SFT_PUBLIC, SFT_TEACHER, SFT_CAPTION, SFT_INSTRUCT):
        p = d / name
        if p.is_file():
            for row in json.loads(p.read_text(encoding="utf-8")):
                for m in row["messages"]:
                    if m["role"] == "system":
                        yield from system_once(m["content"])
                    else:
                        yield clean(m["content"])
    p = d / RL_TRAIN
    if p.is_file():
        t = pq.read_table(p, columns=["prompt", "teacher_caption", "teacher_cot"]).to_pylist()
        for row in t:
            for m in row["prompt"]:
                if m["role"] == "system":
                    yield from system_once(m["content"])
                else:
                    yield clean(m["content"])
            for k in ("teacher_caption", "teacher_cot"):
                if row.get(k):
                    yield row[k]
    p = d / WARMUP
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                for k in ("prompt", "teacher_caption", "student_caption", "teacher_cot", "student_cot"):
                    if obj.get(k):
                        yield obj[k]
    for name in BENCHMARKS:
        p = d / BENCH_DIR / f"{name}.tsv"
        if p.is_file():
            cols = ["question", "answer", "A", "B", "C", "D"]
            df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False,
                             usecols=lambda c: c in cols)
            for rec in df.to_dict(orient="records"):
                opts = {k: rec[k] for k in "ABCD" if rec.get(k)}
                yield format_mcq(rec["question"], opts)
                yield rec["answer"]
