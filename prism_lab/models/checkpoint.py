"""Check a checkpoint directory before anything loads it, and load nothing that does not fit.

Two levels, both raising a one-line CheckpointError that names the directory (or file) and the problem:

- ``inspect_checkpoint`` reads only JSON (config.json and the safetensors headers, never tensor data
  and never torch): the directory exists, config.json parses, is a Qwen3-VL config that states its
  dimensions (a config without them would build the full-size default model: 22 GB for
  ``{"model_type": "qwen3_vl"}``), and there are safetensors weights with at least one tensor (pickle
  files are never loaded).
- ``models.weight_check.verify_weights`` compares the tensors the safetensors headers declare with the model config.json
  describes, built on PyTorch's ``meta`` device (no memory), without any loading code of transformers
  (``models/weight_check.py``), and refuses missing, unexpected, mis-shaped or non-float tensors: a
  checkpoint that does not fit is never silently completed with a random init. ``check_loading_info``
  applies the same rule to a real load (``models.loader.load_policy``).

The safetensors layout (8-byte little-endian header length, JSON header, raw bytes) is the format's
own specification (huggingface/safetensors README, "Format").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prism_lab.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")

#: Dimensions a Qwen3-VL config.json must state (transformers' defaults are the full-size model).
REQUIRED_DIMS = {
    "text_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
    "vision_config": ("depth", "hidden_size"),
}

#: Largest safetensors header read (the format caps it at 100 MB).
_MAX_HEADER = 100 << 20

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _short(names: list[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def read_config(d: Path) -> dict[str, Any]:
    """config.json of ``d``, checked: a Qwen3-VL model type and the dimensions stated."""
    path = d / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{d}: not a checkpoint directory (no config.json)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc}): expected a readable Qwen3-VL "
                              "config.json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type: expected a Qwen3-VL checkpoint (model_type qwen3_vl or "
                              f"qwen3_vl_moe), got {cfg.get('model_type')!r}")
    for section, keys in REQUIRED_DIMS.items():
        sub = cfg.get(section)
        missing = [k for k in keys if not isinstance(sub, dict) or not isinstance(sub.get(k), int)]
        if missing:
            raise CheckpointError(f"{path}: {section}.{missing[0]}: expected the model's dimensions (integers) to be "
                                  "stated; without them transformers builds the full-size default model")
    return cfg


def safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """tensor name -> {dtype, shape, data_offsets} from a safetensors file's header (no tensor data)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data = size - 8 - n
    for name, info in header.items():
        ok = (isinstance(info, dict) and isinstance(info.get("shape"), list)
              and all(isinstance(x, int) and x >= 0 for x in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and 0 <= info["data_offsets"][0] <= info["data_offsets"][1] <= data)
        if not ok:
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry (shape or data offsets)")
    return header


def weight_files(d: Path) -> list[Path]:
    """The safetensors files of ``d`` (the shards an index names, else every *.safetensors)."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index}: weight_map: expected a mapping of tensor names to shard files") from None
        files = []
        for shard in shards:
            p = (d / shard).resolve()
            if p.parent != d.resolve() or not p.is_file():
                raise CheckpointError(f"{index}: weight_map: shard {shard!r} is not a file in {d}")
            files.append(p)
        return files
    files = sorted(d.glob("*.safetensors"))
    if not files:
        pickled = sorted(x.name for x in d.iterdir() if x.suffix in _PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickled)}: pickle weights are never loaded, convert them to safetensors)" if pickled else ""
        raise CheckpointError(f"{d}: no safetensors weights{hint}")
    return files


def inspect_checkpoint(d: str | Path) -> dict[str, Any]:
    """The torch-free checks (see the module doc); returns the parsed config.json."""
    d = Path(d)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist" if not d.exists()
                              else f"checkpoint path {d} is not a directory")
    cfg = read_config(d)
    n = sum(len(safetensors_header(f)) for f in weight_files(d))
    if n == 0:
        raise CheckpointError(f"{d}: the safetensors weights hold no tensors")
    return cfg


def check_loading_info(d: str | Path, info: dict[str, Any]) -> None:
    """Refuse a load that left tensors missing, unexpected or mis-shaped (transformers' loading report)."""
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing {_short(list(info['missing_keys']))}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected {_short(list(info['unexpected_keys']))}")
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        first = mismatched[0]
        detail = (f"{first[0]}: checkpoint {tuple(first[1])} vs model {tuple(first[2])}"
                  if isinstance(first, (tuple, list)) and len(first) == 3 else str(first))
        problems.append(f"{len(mismatched)} mis-shaped ({detail})")
    if problems:
        raise CheckpointError(f"{d}: the weights do not fit the model config.json describes: " + "; ".join(problems))


def model_class(model_type: str):
    if model_type == "qwen3_vl_moe":
        from transformers import Qwen3VLMoeForConditionalGeneration

        return Qwen3VLMoeForConditionalGeneration
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration
