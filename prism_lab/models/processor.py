"""Qwen3-VL processor without a video processor, so it builds and loads without torchvision.

``Qwen3VLProcessor`` cannot be constructed when torchvision is missing (its ``video_processor``
attribute is checked against a dummy class). ``TinyQwen3VLProcessor`` drops that attribute:
``ProcessorMixin`` reads the sub-processor list from the ``__init__`` signature. Images go through
the pure-PIL ``Qwen2VLImageProcessorPil``.

Checkpoints saved by ``save_policy`` name a public processor class instead (``models/portable.py``),
so plain transformers loads them; ``load_processor`` rebuilds this class from their files. Older
checkpoints record ``processor_class: TinyQwen3VLProcessor``; importing this module registers the
class with ``AutoProcessor`` so ``AutoProcessor.from_pretrained(dir)`` returns it.
``load_processor(dir)`` also handles real Qwen3-VL checkpoints (which name ``Qwen3VLProcessor`` and
ship a video processor config) by falling back to this subclass with the checkpoint's tokenizer,
image processor and chat template.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer, PreTrainedConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from prism_lab.errors import CheckpointError
from prism_lab.models.portable import PORTABLE_PROCESSOR_CLASS

log = logging.getLogger(__name__)

#: Qwen3-VL normalises images with mean = std = 0.5 (the checkpoints' preprocessor_config.json).
QWEN3_VL_IMAGE_MEAN = [0.5, 0.5, 0.5]
QWEN3_VL_IMAGE_STD = [0.5, 0.5, 0.5]


class TinyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` with image + text only (no video processor, no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class _TinyQwen3VLProcessorKey(PreTrainedConfig):
    """Private registry key: lets ``AutoProcessor`` resolve the class name ``TinyQwen3VLProcessor``
    from processor_config.json without remapping the native Qwen3-VL config to our class."""

    model_type = "prism_tiny_qwen3_vl_processor"


def _register() -> None:
    try:
        AutoProcessor.register(_TinyQwen3VLProcessorKey, TinyQwen3VLProcessor, exist_ok=True)
    except Exception as exc:  # pragma: no cover - registration API drift; load_processor still works
        log.debug("AutoProcessor registration of TinyQwen3VLProcessor failed: %s", exc)


_register()


def build_image_processor(
    *,
    patch_size: int = 16,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    image_mean: Sequence[float] = QWEN3_VL_IMAGE_MEAN,
    image_std: Sequence[float] = QWEN3_VL_IMAGE_STD,
) -> Qwen2VLImageProcessorPil:
    """The pure-PIL Qwen2-VL image processor (Qwen3-VL normalisation unless told otherwise).

    Defaults: at least one merged patch (``(patch*merge)**2`` pixels) and at most 512x512 pixels.
    Image sides are rounded to multiples of ``patch_size * merge_size``.
    """
    factor = patch_size * merge_size
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        min_pixels=min_pixels if min_pixels is not None else factor * factor,
        max_pixels=max_pixels if max_pixels is not None else 512 * 512,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )


def build_processor(
    tokenizer,
    *,
    patch_size: int = 16,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    image_mean: Sequence[float] = QWEN3_VL_IMAGE_MEAN,
    image_std: Sequence[float] = QWEN3_VL_IMAGE_STD,
) -> TinyQwen3VLProcessor:
    """A ``TinyQwen3VLProcessor`` around ``tokenizer`` (and its chat template)."""
    image_processor = build_image_processor(
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        image_mean=image_mean,
        image_std=image_std,
    )
    return TinyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _chat_template_from_dir(d: Path) -> str | None:
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cj = _read_json(d / "chat_template.json")
    if isinstance(cj.get("chat_template"), str):
        return cj["chat_template"]
    return None


def _image_processor_from_dir(d: Path) -> Qwen2VLImageProcessorPil:
    """Pil image processor from preprocessor_config.json (or processor_config.json's image_processor)."""
    cfg = _read_json(d / "preprocessor_config.json")
    if not cfg:
        cfg = _read_json(d / "processor_config.json").get("image_processor", {})
    if not cfg:
        raise CheckpointError(f"{d}: no image processor config (preprocessor_config.json or processor_config.json)")
    keep = {
        "size", "min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean",
        "image_std", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb", "resample",
    }
    return Qwen2VLImageProcessorPil(**{k: v for k, v in cfg.items() if k in keep})


def load_processor(path: str | Path, *, local_files_only: bool = True):
    """Load the processor of a local checkpoint directory (normally a ``TinyQwen3VLProcessor``).

    Works for directories saved by ``save_policy`` and for real Qwen3-VL checkpoints (whose
    processor names ``Qwen3VLProcessor`` and needs torchvision for its video processor): the
    latter are rebuilt from the checkpoint's tokenizer, image processor config and chat template
    (when torchvision is installed, the checkpoint's native processor is tried first).
    """
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"processor directory {d} does not exist")
    pc = _read_json(d / "processor_config.json")
    name = pc.get("processor_class")
    if name == TinyQwen3VLProcessor.__name__:
        return TinyQwen3VLProcessor.from_pretrained(str(d), local_files_only=local_files_only)
    # A portable prism-lab checkpoint (models/portable.py) is rebuilt below as TinyQwen3VLProcessor.
    if name != PORTABLE_PROCESSOR_CLASS and importlib.util.find_spec("torchvision") is not None:
        # With torchvision the checkpoint's own processor class can be built; use it when it works.
        try:
            proc = AutoProcessor.from_pretrained(str(d), local_files_only=local_files_only)
            if hasattr(proc, "image_processor") and hasattr(proc, "tokenizer"):
                return proc
        except Exception as exc:
            log.debug("AutoProcessor failed for %s (%s); using TinyQwen3VLProcessor", d, exc)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=local_files_only)
    except Exception as exc:
        raise CheckpointError(f"{d}: could not load the tokenizer ({type(exc).__name__}: {exc})") from None
    image_processor = _image_processor_from_dir(d)
    chat_template = _chat_template_from_dir(d) or getattr(tokenizer, "chat_template", None)
    return TinyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
