"""Whether a discriminator reads the policy's inputs as-is: the same tokenizer vocabulary and special
tokens, and the same image preprocessing (the discriminator consumes the policy's token ids and pixel
values directly)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from prism_lab.errors import CheckpointError


class DiscProcessorParts(NamedTuple):
    tokenizer: Any
    image_processor: Any | None


def processor_parts(processor: Any) -> DiscProcessorParts:
    if isinstance(processor, DiscProcessorParts):
        return processor
    tok = getattr(processor, "tokenizer", None)
    if tok is None and hasattr(processor, "get_vocab"):
        tok = processor
    ip = getattr(processor, "image_processor", None)
    return DiscProcessorParts(tok, ip)


def _image_settings(ip: Any) -> dict[str, Any]:
    d = ip.to_dict() if hasattr(ip, "to_dict") else dict(vars(ip))
    size = d.get("size") or {}
    if not isinstance(size, Mapping):
        size = {}
    min_pixels = d.get("min_pixels") or size.get("shortest_edge")
    max_pixels = d.get("max_pixels") or size.get("longest_edge")

    def floats(x: Any) -> Any:
        if x is None:
            return None
        if isinstance(x, (list, tuple)):
            return tuple(round(float(v), 6) for v in x)
        return round(float(x), 6)

    return {
        "patch_size": d.get("patch_size"),
        "merge_size": d.get("merge_size"),
        "temporal_patch_size": d.get("temporal_patch_size"),
        "image_mean": floats(d.get("image_mean")),
        "image_std": floats(d.get("image_std")),
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "rescale_factor": floats(d.get("rescale_factor")),
    }


def check_compatible(disc_processor: Any, policy_processor: Any, *, where: str = "discriminator") -> None:
    """Raise :class:`CheckpointError` (one line) unless the discriminator reads the policy's inputs as-is:
    identical tokenizer vocabulary and added/special tokens, and identical image preprocessing (patch size,
    merge size, temporal patch size, mean/std, rescale factor, min/max pixels)."""
    d, p = processor_parts(disc_processor), processor_parts(policy_processor)
    if d.tokenizer is None or p.tokenizer is None:
        raise CheckpointError(f"{where}: cannot check compatibility: a processor has no tokenizer")
    dv, pv = d.tokenizer.get_vocab(), p.tokenizer.get_vocab()
    if dv != pv:
        diff = len(set(dv.items()) ^ set(pv.items()))
        raise CheckpointError(
            f"{where}: tokenizer vocabulary differs from the policy's ({len(dv)} vs {len(pv)} tokens, "
            f"{diff} differing entries); the discriminator must read the policy's token ids"
        )

    def added(tok: Any) -> dict[int, tuple[str, bool]]:
        dec = getattr(tok, "added_tokens_decoder", {}) or {}
        return {int(i): (str(t), bool(getattr(t, "special", False))) for i, t in dec.items()}

    da, pa = added(d.tokenizer), added(p.tokenizer)
    if da != pa:
        bad = sorted(set(da.items()) ^ set(pa.items()))[:3]
        raise CheckpointError(f"{where}: special/added tokens differ from the policy's, e.g. {bad}")
    if (d.image_processor is None) != (p.image_processor is None):
        side = "discriminator" if d.image_processor is None else "policy"
        raise CheckpointError(f"{where}: the {side} processor has no image processor; cannot check image settings")
    if d.image_processor is not None:
        ds, ps = _image_settings(d.image_processor), _image_settings(p.image_processor)
        for key in ds:
            if ds[key] != ps[key]:
                raise CheckpointError(
                    f"{where}: image processor {key} differs from the policy's ({ds[key]!r} vs {ps[key]!r})"
                )
