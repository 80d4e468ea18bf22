"""Benchmarks as VLMEvalKit datasets: our synthetic TSVs, and the paper's official benchmark files.

Importing this module does not import VLMEvalKit; :func:`dataset_classes` and :func:`register_datasets`
do (through :func:`prism_lab.eval.vlmeval.tv_shim.import_vlmeval`).

Synthetic benchmarks (``source: synth``) get three dataset classes, one per kind, all reading
``$LMUData/<name>.tsv`` (no md5, no download):

- ``PrismMCQDataset`` (an ``ImageMCQDataset``), ``PrismYesNoDataset`` (an ``ImageYORNDataset``) and
  ``PrismOpenDataset`` (an ``ImageBaseDataset`` of TYPE ``VQA``);
- ``build_prompt`` gives exactly the built-in backend's user text (question, ``A. ...`` option lines and
  "Answer with the letter." for rows with options; "Answer Yes or No." for Yes/No rows), so both
  backends ask the model the same thing;
- ``evaluate`` scores every row with the PRISM rule judge (:func:`prism_lab.eval.vlmeval.judge.rule_correct`)
  and writes ``<pred>_prism_result.tsv`` (per-row ``hit``) and ``<pred>_acc.csv``; the Yes/No class
  also reports VLMEvalKit's own HallusionBench metrics (aAcc / fAcc / qAcc) when the indices follow
  HallusionBench's ``<cat>_<subcat>_<n>_<set>_<figure>_<question>`` layout, plus VLMEvalKit's own
  Yes/No extraction accuracy for comparison.

:func:`register_datasets` also makes the synthetic names known to ``vlmeval.dataset.build_dataset`` (and
so to ``python -m vlmeval --data synth-perception ...``).

Official benchmarks (``source: vlmevalkit``): :data:`OFFICIAL` lists, for each VLMEvalKit name the
paper uses, its VLMEvalKit class, whether VLMEvalKit's ``evaluate`` needs an LLM judge, and where the
official TSV comes from. :func:`check_benchmark_file` / :func:`missing_file_message` say which file is
missing, where it must go and how to get it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import DataError

__all__ = [
    "OFFICIAL",
    "OfficialBenchmark",
    "check_benchmark_file",
    "dataset_classes",
    "file_md5",
    "lmu_root",
    "missing_file_message",
    "official_class",
    "register_datasets",
]

_BASE = "https://opencompass.openxlab.space/utils"


@dataclass(frozen=True)
class OfficialBenchmark:
    """One official VLMEvalKit benchmark file (ms-vlmeval 0.0.20's DATASET_URL / DATASET_MD5)."""

    name: str
    vlmeval_class: str
    url: str
    md5: str | None
    needs_judge: bool  # VLMEvalKit's own evaluate asserts a working LLM judge


#: The paper's benchmarks (+ MMStar), as ms-vlmeval 0.0.20 defines them.
OFFICIAL: dict[str, OfficialBenchmark] = {b.name: b for b in (
    OfficialBenchmark("MathVista_MINI", "MathVista", f"{_BASE}/VLMEval/MathVista_MINI.tsv",
                      "f199b98e178e5a2a20e7048f5dcb0464", True),
    OfficialBenchmark("MathVision_MINI", "MathVision", f"{_BASE}/VLMEval/MathVision_MINI.tsv", None, True),
    OfficialBenchmark("MathVerse_MINI", "MathVerse", f"{_BASE}/benchmarks/MathVerse/MathVerse_MINIV.tsv",
                      None, True),
    OfficialBenchmark("WeMath", "WeMath", f"{_BASE}/VLMEval/WeMath.tsv", "b5e969a075f01290a542411fb7766388", False),
    OfficialBenchmark("MMMU_DEV_VAL", "MMMUDataset", f"{_BASE}/VLMEval/MMMU_DEV_VAL.tsv",
                      "585e8ad75e73f75dcad265dfd0417d64", False),
    OfficialBenchmark("MMMU_Pro_10c", "MMMUProDataset", f"{_BASE}/VLMEval/MMMU_Pro_10c.tsv",
                      "22cee868fe6b680d14b99bfff6db8172", False),
    OfficialBenchmark("HallusionBench", "ImageYORNDataset", f"{_BASE}/VLMEval/HallusionBench.tsv",
                      "0c23ac0dc9ef46832d7a24504f2a0c7c", False),
    OfficialBenchmark("MMStar", "ImageMCQDataset", f"{_BASE}/VLMEval/MMStar.tsv",
                      "e1ecd2140806c1b1bbf54b43372efb9e", False),
)}

#: VLMEvalKit classes whose ``evaluate`` needs an LLM judge: scored with our rules (+ optional judge).
JUDGE_CLASSES = frozenset({"MathVista", "MathVision", "MathVerse"})


def lmu_root() -> Path:
    """VLMEvalKit's data root: ``$LMUData`` when set (VLMEvalKit itself also requires it to exist), else
    ``~/LMUData``."""
    env = os.environ.get("LMUData")
    return Path(env) if env else Path.home() / "LMUData"


def file_md5(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()  # noqa: S324 - VLMEvalKit's file check, not security
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def missing_file_message(spec: Any, path: str | Path | None = None) -> str:
    """The error text for a benchmark whose TSV is missing: which file, where it must go, how to get it."""
    path = Path(path) if path is not None else spec.tsv_path()
    name = getattr(spec, "vlmeval_name", None) or Path(spec.file).stem
    off = OFFICIAL.get(name)
    msg = (f"benchmark {spec.name!r}: TSV file {spec.file} not found; it must be at {path} "
           f"(VLMEvalKit's data root: $LMUData={os.environ.get('LMUData', '(unset)')}, default ~/LMUData). ")
    if getattr(spec, "source", None) == "synth":
        return msg + "Generate it with the data stage (prism_lab.data.synth.generate.generate writes bench/<name>.tsv)."
    if off is not None:
        msg += (f"Get the official VLMEvalKit file {off.name}.tsv from {off.url} on a machine with internet "
                f"access (e.g. `wget -O {off.name}.tsv {off.url}`, or run VLMEvalKit once there) and copy it to "
                f"{path}")
        if off.md5:
            msg += f"; its md5 must be {off.md5} (VLMEvalKit re-downloads a file whose md5 differs)"
        return msg + "."
    return msg + ("Place a TSV in VLMEvalKit's layout there (columns index, image (base64), question, answer, "
                  "options A, B, ... for multiple choice); see docs/vlmevalkit.md.")


def check_benchmark_file(spec: Any, path: str | Path | None = None, *, check_md5: bool = True) -> Path:
    """The benchmark's TSV path; DataError when it is missing (see :func:`missing_file_message`) or when an
    official file's md5 differs from VLMEvalKit's (offline, VLMEvalKit would fail trying to re-download)."""
    path = Path(path) if path is not None else spec.tsv_path()
    if not path.is_file():
        raise DataError(missing_file_message(spec, path))
    off = OFFICIAL.get(path.stem)
    if check_md5 and off is not None and off.md5 and path.stem == getattr(spec, "vlmeval_name", None):
        got = file_md5(path)
        if got != off.md5:
            raise DataError(
                f"benchmark {spec.name!r}: {path} is not the official {off.name}.tsv (md5 {got}, expected "
                f"{off.md5}); VLMEvalKit would try to re-download it from {off.url}. Replace it with the official "
                f"file, or rename it (e.g. {off.name}_local.tsv, with `file: {off.name}_local.tsv` in the "
                "benchmark YAML) to evaluate it as a local variant.")
    return path


# ----------------------------------------------------------------------------------------------- classes
_CLASSES: dict[str, type] | None = None


def dataset_classes() -> dict[str, type]:
    """``{"mcq": PrismMCQDataset, "yesno": PrismYesNoDataset, "open": PrismOpenDataset}`` (imports vlmeval;
    the classes are in :mod:`prism_lab.eval.vlmeval.synth_datasets`)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    from prism_lab.eval.vlmeval.synth_datasets import (
        PrismMCQDataset,
        PrismOpenDataset,
        PrismYesNoDataset,
    )

    _CLASSES = {"mcq": PrismMCQDataset, "yesno": PrismYesNoDataset, "open": PrismOpenDataset}
    return _CLASSES


def official_class(vlmeval_name: str) -> type:
    """The VLMEvalKit dataset class of an official name (the first class that lists it, as
    ``build_dataset`` does). Unknown names raise DataError."""
    from prism_lab.eval.vlmeval.tv_shim import import_vlmeval

    import_vlmeval()
    from vlmeval.dataset import DATASET_CLASSES

    for cls in DATASET_CLASSES:
        try:
            if vlmeval_name in cls.supported_datasets():
                return cls
        except Exception:  # noqa: BLE001 - a broken class must not hide the others
            continue
    raise DataError(f"{vlmeval_name!r} is not a VLMEvalKit dataset name (ms-vlmeval 0.0.20); check vlmeval_name "
                    "in the benchmark YAML")


def register_datasets(kinds: Mapping[str, str]) -> dict[str, type]:
    """Make synthetic dataset names (``{name: kind}``) known to VLMEvalKit's ``build_dataset`` and
    ``DATASET_TYPE``, so ``build_dataset("synth-perception")`` returns a ``PrismOpenDataset``."""
    classes = dataset_classes()
    import vlmeval.dataset as vd

    for name, kind in kinds.items():
        if kind not in classes:
            raise DataError(f"dataset {name!r}: unknown kind {kind!r}; expected one of {sorted(classes)}")
        for k, cls in classes.items():
            if name in cls.REGISTERED and k != kind:
                cls.REGISTERED.remove(name)
        if name not in classes[kind].REGISTERED:
            classes[kind].REGISTERED.append(name)
        if name not in vd.SUPPORTED_DATASETS:
            vd.SUPPORTED_DATASETS.append(name)
    for cls in classes.values():
        if cls not in vd.DATASET_CLASSES:
            vd.DATASET_CLASSES.insert(0, cls)
    return classes
