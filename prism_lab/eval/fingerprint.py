"""The evaluation fingerprint: under which protocol one benchmark's score was made (issue #34, item 4).

Every eval run records, per benchmark, a small dict of what decides the score besides the checkpoint, and a
short hash of it (:func:`eval_fingerprint`)::

    benchmark_sha256  the benchmark's definition (its YAML's fields, canonical JSON: comments do not count)
    data_sha256       its data file (the TSV's sha256; an lm-eval task's ``task_fingerprint``)
    prompt_template   the prompting convention (the checkpoint's ``prism_prompting.json``; an lm-eval task's
                      few-shot count and chat template)
    backend, backend_version   builtin (prism-lab's version), lmeval (lm-eval's), vlmevalkit (VLMEvalKit's)
    judge, judge_version       the model judge, when one scores (None: rule scoring only)
    decoding          the resolved generation settings (max_new_tokens, sampling, temperature, top_p, ...)
    engine            the inference engine: hf or vllm

The stage writes them into its ``results.json`` and ``run.json`` and, as one ``eval_fingerprint`` event per
run (benchmark -> fingerprint), into the ledger. ``sweep status`` and ``report`` compare them across the eval
runs of a sweep: a benchmark column whose runs were made under different fingerprints gets one warning line
naming the benchmark and the fields that differ (:func:`mixed_fingerprints`, :func:`mixed_warning`).

:func:`protocol_key` is the part of the fingerprint the eval stage's content key lacks (the planner adds it):
the benchmark definitions and the versions of the external backends. The decoding overrides and the backend
name are already in the key (the eval config), the checkpoint and its prompting convention too (the
checkpoint's key), a synthetic benchmark's data as well (the data run's key); prism-lab's own version is not
(a new release would re-run every evaluation: the code fingerprint marks such runs stale instead).

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["FINGERPRINT_EVENT", "Mixed", "backend_version", "benchmark_fingerprint", "eval_fingerprint", "mixed_fingerprints",
           "mixed_warning", "protocol_key", "recorded_fingerprints", "spec_sha256"]

#: The ledger event kind an eval run records its fingerprints under (message: JSON, benchmark -> fingerprint).
FINGERPRINT_EVENT = "eval_fingerprint"

#: Backend -> the distribution whose version is the backend's version.
BACKEND_PACKAGES = {"builtin": "prism-lab", "lmeval": "lm_eval", "vlmevalkit": "ms-vlmeval", "lmms_eval": "lmms_eval"}

#: Characters of the short hash shown in tables.
SHORT = 12


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


#: Benchmark fields added after eval runs were recorded: left out of the definition's hash while unset, so every
#: earlier benchmark keeps its hash (and its eval runs their keys).
ADDED_SPEC_FIELDS = ("lmms_task", "lmms_dataset")


def spec_sha256(spec: Any) -> str:
    """sha256 of a benchmark's definition: its validated fields as canonical JSON (:data:`ADDED_SPEC_FIELDS` only
    when set)."""
    fields = spec.model_dump(mode="json")
    for name in ADDED_SPEC_FIELDS:
        if fields.get(name) is None:
            fields.pop(name, None)
    return hashlib.sha256(_canonical(fields).encode()).hexdigest()


def eval_fingerprint(*, benchmark_sha256: str, data_sha256: str, prompt_template: Mapping[str, Any], backend: str,
                     backend_version: str | None, decoding: Mapping[str, Any], engine: str | None,
                     judge: str | None = None, judge_version: str | None = None) -> dict[str, Any]:
    """``{"hash": <12 hex>, "fields": {...}}``: the fields of the module doc and the short hash of their canonical
    JSON (equal fields, equal hash)."""
    fields = {
        "benchmark_sha256": benchmark_sha256, "data_sha256": data_sha256, "prompt_template": dict(prompt_template),
        "backend": backend, "backend_version": backend_version, "judge": judge, "judge_version": judge_version,
        "decoding": dict(decoding), "engine": engine,
    }
    return {"hash": hashlib.sha256(_canonical(fields).encode()).hexdigest()[:SHORT], "fields": fields}


def benchmark_fingerprint(spec: Any, data_sha256: str, prompting: Any, settings: Any, backend: Any) -> dict[str, Any]:
    """The fingerprint of one benchmark evaluated by ``backend`` (an ``EvalBackend``) with ``settings`` (its
    ``GenerationSettings``) and the checkpoint's ``prompting``."""
    template = ({"num_fewshot": spec.num_fewshot, "chat_template": spec.chat_template} if spec.kind == "lmeval"
                else prompting.to_dict())
    judge, judge_version = backend.judge_identity()
    return eval_fingerprint(benchmark_sha256=spec_sha256(spec), data_sha256=data_sha256, prompt_template=template,
                            backend=backend.name, backend_version=backend_version(backend.name),
                            decoding=settings.to_dict(), engine=backend.inference_engine(), judge=judge,
                            judge_version=judge_version)


# ----------------------------------------------------------------------------------------------- versions
def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def _version_in(python: str, dist: str) -> str | None:
    """The version of ``dist`` in another interpreter's environment (VLMEvalKit's own virtualenv)."""
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def backend_version(name: str) -> str | None:
    """The installed version of backend ``name`` (None: unknown, or not installed here)."""
    dist = BACKEND_PACKAGES.get(name)
    if dist is None:
        return None
    found = _installed(dist)
    if found is None and name == "builtin":  # a checkout used without installing it
        return importlib.import_module("prism_lab").__version__
    if found is None and name in ("vlmevalkit", "lmms_eval"):  # they usually live in a virtualenv of their own
        from prism_lab.errors import ConfigError
        from prism_lab.eval.lmms.backend import find_lmms_python
        from prism_lab.eval.vlmeval.backend import find_vlmeval_python

        try:
            return _version_in((find_vlmeval_python if name == "vlmevalkit" else find_lmms_python)(), dist)
        except ConfigError:
            return None
    return found


def protocol_key(benchmarks: Sequence[str], backend: str, search_dirs: Sequence[Any] | None = None) -> str:
    """What the eval stage's content key adds for an evaluation of ``benchmarks`` with ``backend``: each
    benchmark's definition and the versions of the external backends that evaluate them (lm-eval for
    ``kind: lmeval`` benchmarks, the configured backend when it is not builtin)."""
    from prism_lab.eval.benchmarks import all_benchmarks

    specs = all_benchmarks(search_dirs)
    known = [specs[b] for b in benchmarks if b in specs]
    external = {"lmeval"} if any(s.kind == "lmeval" for s in known) else set()
    if any(s.kind == "lmms" for s in known):
        external.add("lmms_eval")
    if backend != "builtin" and any(s.kind not in ("lmeval", "lmms") for s in known):
        external.add(backend)
    payload = {"benchmarks": {s.name: spec_sha256(s) for s in known},
               "backends": {b: backend_version(b) for b in sorted(external)}}
    return "eval-protocol-" + hashlib.sha256(_canonical(payload).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- comparing
def recorded_fingerprints(ledger: Any, keys: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """run key -> benchmark -> fingerprint, from each run's latest ``eval_fingerprint`` event (runs without
    one, made before prism-lab recorded them, are left out)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, message in ledger.latest_events(FINGERPRINT_EVENT, keys).items():
        try:
            prints = json.loads(message) if message is not None else None
        except ValueError:
            prints = None
        if isinstance(prints, dict):
            out[key] = prints
    return out


def _flat(fields: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class Mixed:
    """A benchmark whose eval runs were made under more than one fingerprint."""

    benchmark: str
    hashes: tuple[str, ...]  # the one with most runs first (then by hash)
    runs: int
    fields: dict[str, tuple[Any, ...]]  # dotted field name -> its distinct values, in the order of ``hashes``


def mixed_fingerprints(per_run: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Mixed]:
    """The benchmarks of ``per_run`` (run key -> benchmark -> fingerprint) whose runs do not share one
    fingerprint, in the order first seen, each with the fields that differ."""
    by_bench: dict[str, list[Mapping[str, Any]]] = {}
    for prints in per_run.values():
        for bench, fp in prints.items():
            by_bench.setdefault(bench, []).append(fp)
    out = []
    for bench, fps in by_bench.items():
        counts = Counter(str(fp.get("hash")) for fp in fps)
        if len(counts) < 2:
            continue
        hashes = tuple(sorted(counts, key=lambda h: (-counts[h], h)))  # the most runs first
        fps = sorted(fps, key=lambda fp: hashes.index(str(fp.get("hash"))))
        flats = [_flat(fp.get("fields") or {}) for fp in fps]
        names = list(dict.fromkeys(n for f in flats for n in f))
        fields = {}
        for n in names:
            values = tuple(dict.fromkeys(_canonical(f.get(n)) for f in flats))
            if len(values) > 1:
                fields[n] = tuple(json.loads(v) for v in values)
        out.append(Mixed(bench, hashes, len(fps), fields))
    return out


def _short(value: Any) -> str:
    text = "none" if value is None else str(value)
    return text[:SHORT] if len(text) == 64 else text  # a sha256 as its short form


def mixed_warning(m: Mixed) -> str:
    """One line: the benchmark, how many runs under how many fingerprints, and the fields that differ."""
    differ = "; ".join(f"{n} {' vs '.join(_short(v) for v in vals)}" for n, vals in m.fields.items()) or "their hash"
    return (f"benchmark {m.benchmark}: its {m.runs} eval runs were made under {len(m.hashes)} different evaluation "
            f"fingerprints ({', '.join(m.hashes)}), differing in {differ}: their scores are not comparable")
