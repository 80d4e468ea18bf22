"""The dtype of an exported checkpoint: floating weights cast to it, and ``config.json`` saying so.

``save_pretrained`` writes the dtype of the in-memory model into ``config.json`` (``dtype``, the
transformers 5 name of the older ``torch_dtype``), even when it is handed a state dict of another
dtype. A checkpoint exported in bf16 from fp32 master weights therefore states its dtype here, after
the save, so that a loader reading ``dtype="auto"`` (vLLM, ``from_pretrained(dtype="auto")``) loads
what is on disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["DTYPE_NAMES", "cast_floating", "in_dtype", "state_dtype_in_config"]

#: The names ``config.json`` uses for the dtypes an export may have.
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def in_dtype(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> bool:
    """True when every floating tensor of ``state_dict`` already has ``dtype`` (nothing to cast)."""
    return all(v.dtype == dtype for v in state_dict.values() if v.is_floating_point())


def cast_floating(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A CPU copy of ``state_dict`` with its floating tensors in ``dtype`` (others unchanged). Entries that share
    storage (tied weights) stay shared, so the save keeps the tie."""
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if ident not in seen:
            moved = value.detach().to("cpu")
            seen[ident] = moved.to(dtype) if moved.is_floating_point() else moved
        out[name] = seen[ident]
    return out


def state_dtype_in_config(checkpoint_dir: str | Path, dtype: torch.dtype) -> None:
    """Write ``dtype`` into the checkpoint's ``config.json``: the top-level ``dtype`` and that of every sub-config
    which names one."""
    path = Path(checkpoint_dir) / "config.json"
    config = json.loads(path.read_text())
    name = DTYPE_NAMES[dtype]

    def stamp(node: dict, top: bool) -> None:
        for key in ("dtype", "torch_dtype"):
            if key in node or (top and key == "dtype"):
                node[key] = name
        for value in node.values():
            if isinstance(value, dict):
                stamp(value, False)

    stamp(config, True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
