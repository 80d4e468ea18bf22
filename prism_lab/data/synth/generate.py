"""The embedded synthetic multimodal task: coloured shapes, counting and arithmetic over counts.

``generate(cfg, out_dir)`` writes, deterministically and atomically, the three datasets the paper uses
plus held-out benchmarks, in the real schemas (so the same readers load the released PRISM data):

- ``sft_public.json``: broad, noisier SFT mixture (terse/partial captions, terse reasoning, a share of
  wrong answers, a few format breaks) -- the source of "SFT drift";
- ``sft_teacher.json``: dense, correct teacher demonstrations on the hardest items;
- ``sft_caption.json``: perception pre-training, "describe the image" -> the dense caption. It stands in
  for the visual pre-training a real Qwen3-VL checkpoint starts from (a tiny random-init tower learns
  to see mostly from it); the paper's SFT does not have it, and ``sft.datasets`` decides whether it is used;
- ``rl_train.parquet``: verl RLHF schema + ``teacher_caption``/``teacher_cot``;
- ``warmup_pairs.jsonl``: discriminator warmup pairs (teacher vs public-style student segments);
- ``bench/synth-{perception,reasoning,hallusion}.tsv``: VLMEvalKit TSVs, held out (own seeds, and no
  (image, question) pair shared with the training files);
- ``images/<id>.png`` and ``manifest.json`` (config, generator version, per-file sha256 and row counts).

Scenes: a white ``image_size`` square with 1..``max_objects`` free-placed non-overlapping shapes of
``min_object_size``..``max_object_size`` px (they straddle the 16 px patches; docs/cpu_notes.md §5).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism_lab.data.bench_tsv import write_benchmark_tsv
from prism_lab.data.synth.benchmarks import (
    HALLUSION_COLUMNS,
    MCQ_COLUMNS,
    PERCEPTION_FAMILIES,
    REASONING_FAMILIES,
    bench_rows,
    hallusion_rows,
)
from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.files import (
    BENCH_DIR,
    BENCHMARKS,
    MANIFEST,
    RL_TRAIN,
    SFT_CAPTION,
    SFT_HELDOUT,
    SFT_INSTRUCT,
    SFT_PUBLIC,
    SFT_TEACHER,
    WARMUP,
)
from prism_lab.data.synth.sampling import Progress
from prism_lab.data.synth.splits import (
    write_caption,
    write_heldout,
    write_instruct,
    write_public,
    write_rl,
    write_teacher,
    write_warmup,
)
from prism_lab.data.synth.text_task import TEXT_TASK_FILE, write_text_task
from prism_lab.errors import ConfigError

GENERATOR_VERSION = "8"  # 5: the teacher checks the options in order before it names the letter; 6: so do the
#                            public rows, tersely (no line that finds the value); 7: a public presence answer names
#                            the count of the asked kind (`red circles = 0`), not `I think no.`; 8: a share of the
#                            base's counting MCQ rows puts the dense caption first


def _validated(cfg: SynthConfig | Mapping[str, Any]) -> SynthConfig:
    if isinstance(cfg, SynthConfig):
        data = {k: getattr(cfg, k) for k in SynthConfig.model_fields}
        return SynthConfig.from_dict(data)
    if isinstance(cfg, Mapping):
        return SynthConfig.from_dict(cfg)
    raise ConfigError(f"synth config: expected a SynthConfig or a mapping, got {type(cfg).__name__}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _write_files(cfg: SynthConfig, tmp: Path, progress: bool) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Every training file and benchmark into ``tmp``: (rows per file, family counts per file)."""
    prog = Progress(progress)
    seen: set = set()
    rows: dict[str, int] = {}
    families: dict[str, dict[str, int]] = {}
    writers = [(SFT_PUBLIC, write_public), (SFT_TEACHER, write_teacher)]
    if cfg.n_caption:
        writers.append((SFT_CAPTION, write_caption))
    if cfg.n_instruct:
        writers.append((SFT_INSTRUCT, write_instruct))
    if cfg.n_heldout:
        writers.append((SFT_HELDOUT, write_heldout))
    for fname, fn in (*writers, (RL_TRAIN, write_rl), (WARMUP, write_warmup)):
        rows[fname], fam = fn(cfg, tmp, seen, prog)
        families[fname] = dict(sorted(fam.items()))
    if cfg.n_text:
        rel = f"{BENCH_DIR}/{TEXT_TASK_FILE}"
        rows[rel] = write_text_task(tmp / rel, cfg.seed, cfg.n_text, cfg.colours, cfg.shapes)
    tables = {
        "synth-perception": bench_rows(cfg, "synth-perception", PERCEPTION_FAMILIES, seen, prog),
        "synth-reasoning": bench_rows(cfg, "synth-reasoning", REASONING_FAMILIES, seen, prog),
        "synth-hallusion": hallusion_rows(cfg, seen, prog),
    }
    for name, brows in tables.items():
        rel = f"{BENCH_DIR}/{name}.tsv"
        cols = HALLUSION_COLUMNS if name == "synth-hallusion" else MCQ_COLUMNS
        rows[rel] = write_benchmark_tsv(tmp / rel, brows, cols)
        families[rel] = dict(sorted(Counter(str(r["category"]) for r in brows).items()))
    return rows, families


def _manifest(cfg: SynthConfig, tmp: Path, rows: dict[str, int], families: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The manifest of the files in ``tmp``: config, per-file sha256 and rows, images hash, fingerprint."""
    files = {rel: {"sha256": _sha256(tmp / rel), "rows": n} for rel, n in sorted(rows.items())}
    img_hash = hashlib.sha256()
    images = sorted((tmp / "images").iterdir())
    for p in images:
        img_hash.update(p.name.encode() + b"\0" + _sha256(p).encode() + b"\n")
    fp = hashlib.sha256()
    for rel, info in files.items():
        fp.update(f"{rel}:{info['sha256']}\n".encode())
    fp.update(img_hash.hexdigest().encode())
    return {
        "generator": "prism_lab.data.synth.generate",
        "generator_version": GENERATOR_VERSION,
        "config": cfg.model_dump(mode="json"),
        "files": files,
        "images": {"dir": "images", "count": len(images), "sha256": img_hash.hexdigest()},
        "families": families,
        "benchmarks": {name: f"{BENCH_DIR}/{name}.tsv" for name in BENCHMARKS},
        "fingerprint": fp.hexdigest(),
    }


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out_dir`` (replacing a non-empty one only with ``overwrite``)."""
    if out_dir.exists():
        if _is_nonempty_dir(out_dir):
            if not overwrite:
                raise ConfigError(f"synth output {out_dir}: directory appeared during generation")
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            out_dir.rmdir()
            os.replace(tmp, out_dir)
    else:
        os.replace(tmp, out_dir)


def generate(
    cfg: SynthConfig | Mapping[str, Any],
    out_dir: str | Path,
    *,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate every dataset into ``out_dir`` (atomically) and return the manifest.

    The same config gives byte-identical files. An existing non-empty ``out_dir`` is an error unless
    ``overwrite=True``. Bad options raise ConfigError naming the field.
    """
    cfg = _validated(cfg)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"synth output {out_dir}: exists and is not a directory")
    if _is_nonempty_dir(out_dir) and not overwrite:
        raise ConfigError(f"synth output {out_dir}: directory exists and is not empty (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / BENCH_DIR).mkdir()
        rows, families = _write_files(cfg, tmp, progress)
        manifest = _manifest(cfg, tmp, rows, families)
        (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out_dir, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
