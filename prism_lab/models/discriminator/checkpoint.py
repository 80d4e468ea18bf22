"""A discriminator on disk: one HF directory (backbone ``config.json`` + ``model.safetensors``), the score
head in ``score_head.safetensors``, the processor files and ``discriminator.json``. Safetensors only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from prism_lab.errors import CheckpointError
from prism_lab.models.discriminator.compat import (
    DiscProcessorParts,
    check_compatible,
    processor_parts,
)
from prism_lab.models.discriminator.scorer import DISC_KINDS, Discriminator, ScoreHead

DISC_CONFIG_NAME = "discriminator.json"
HEAD_FILE_NAME = "score_head.safetensors"
_FORMAT_TAG = "prism_lab.discriminator"
_FORMAT_VERSION = 1


def save_discriminator(disc: Discriminator, processor: Any, out_dir: str | Path,
                       state_dict: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir``: the backbone as an HF model (``config.json`` + ``model.safetensors``), the head as
    ``score_head.safetensors`` (key ``v_head.1.weight``, shape ``[1, d]``), the processor files, and
    ``discriminator.json`` (kind, head config, backbone class). Safetensors only, never pickle.

    ``state_dict``: the discriminator's full weights (``backbone.*``, ``head.*``) when ``disc`` itself holds
    only a shard of them (a multi-process run gathers them on rank 0)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if processor is None:
        raise CheckpointError(f"{out}: a processor is required so that loading can check compatibility")
    if state_dict is None:
        disc.backbone.save_pretrained(out, safe_serialization=True)
        head_sd = {k: v.detach().to("cpu").contiguous() for k, v in disc.head.state_dict().items()}
    else:
        part = {p: {k[len(p) + 1:]: v for k, v in state_dict.items() if k.startswith(p + ".")} for p in ("backbone", "head")}
        disc.backbone.save_pretrained(out, safe_serialization=True, state_dict=part["backbone"])
        head_sd = {k: v.detach().to("cpu").contiguous() for k, v in part["head"].items()}
    save_file(head_sd, str(out / HEAD_FILE_NAME), metadata={"format": "pt"})
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(out)
    else:
        parts = processor_parts(processor)
        parts.tokenizer.save_pretrained(out)
        if parts.image_processor is not None:
            parts.image_processor.save_pretrained(out)
    meta = {
        "format": _FORMAT_TAG,
        "version": _FORMAT_VERSION,
        "kind": disc.kind,
        "backbone_class": type(disc.backbone).__name__,
        "head": disc.head.head_config(),
        "head_file": HEAD_FILE_NAME,
    }
    (out / DISC_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _backbone_class(name: str) -> Any:
    import transformers

    allowed = {"Qwen3VLMoeModel", "Qwen3VLModel"}
    if name not in allowed:
        raise CheckpointError(f"unsupported discriminator backbone class {name!r}; expected one of {sorted(allowed)}")
    return getattr(transformers, name)


def load_discriminator_processor(path: str | Path) -> DiscProcessorParts:
    """The tokenizer and image processor saved with a discriminator (image processor None if absent)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    p = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - turned into one actionable line
        raise CheckpointError(f"{p}: cannot load the discriminator tokenizer ({type(e).__name__}: {e})") from e
    try:
        ip = AutoImageProcessor.from_pretrained(p, local_files_only=True)
    except Exception:  # noqa: BLE001 - a text-only directory legitimately has none
        ip = None
    return DiscProcessorParts(tok, ip)


def load_discriminator(
    path: str | Path,
    *,
    policy_processor: Any | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Discriminator:
    """Load a directory written by :func:`save_discriminator` (in eval mode).

    With ``policy_processor`` the saved processor is checked first (:func:`check_compatible`); a mismatch
    raises :class:`CheckpointError` before any weights are read.
    """
    p = Path(path)
    meta_path = p / DISC_CONFIG_NAME
    if not meta_path.is_file():
        raise CheckpointError(f"{p}: not a discriminator directory (no {DISC_CONFIG_NAME})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: invalid JSON ({e})") from e
    if meta.get("format") != _FORMAT_TAG or meta.get("kind") not in DISC_KINDS:
        raise CheckpointError(f"{meta_path}: unexpected content (format={meta.get('format')!r}, kind={meta.get('kind')!r})")
    head_path = p / meta.get("head_file", HEAD_FILE_NAME)
    for needed in (p / "config.json", head_path):
        if not needed.is_file():
            raise CheckpointError(f"{p}: incomplete discriminator directory, missing {needed.name}")
    if policy_processor is not None:
        check_compatible(load_discriminator_processor(p), policy_processor, where=f"discriminator {p}")

    cls = _backbone_class(str(meta.get("backbone_class")))
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        backbone = cls.from_pretrained(p, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{p}: cannot load the discriminator backbone ({type(e).__name__}: {e})") from e
    hc = meta.get("head") or {}
    head = ScoreHead(int(hc["hidden_size"]), dropout=float(hc.get("dropout", 0.1)), init_std=float(hc.get("init_std", 0.02)))
    sd = load_file(str(head_path))
    try:
        head.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{head_path}: score head does not match discriminator.json ({e})") from e
    param = next(backbone.parameters())
    head = head.to(device=param.device, dtype=dtype or param.dtype)
    disc = Discriminator(backbone, kind=meta["kind"], head=head)
    if device is not None:
        disc = disc.to(device)
    return disc.eval()
