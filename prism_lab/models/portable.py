"""Make a saved checkpoint loadable by plain transformers (no prism_lab import, no torchvision).

prism-lab's own processor, ``TinyQwen3VLProcessor``, is a private class: a checkpoint that names it
in ``processor_class`` makes ``AutoProcessor.from_pretrained`` return only the tokenizer, silently
(transformers 5.24, models/auto/processing_auto.py: an unknown class name falls through to the
``AutoTokenizer`` fallback). Naming ``Qwen3VLProcessor`` instead does not help without torchvision:
its video processor is a primary sub-processor and every video processor requires torchvision.

So the saved files name **``PaddleOCRVLProcessor``**, the public transformers processor with only an
image processor and a tokenizer whose image rule is the Qwen2/3-VL one: each image placeholder becomes
``image_grid_thw.prod() // merge_size**2`` copies of ``tokenizer.image_token``, and it returns
``mm_token_type_ids`` (transformers 5.24, models/paddleocr_vl/processing_paddleocr_vl.py). On a
prism-lab checkpoint it yields exactly the tensors ``TinyQwen3VLProcessor`` yields (input ids, mask,
mm_token_type_ids, pixel_values, image_grid_thw); ``tests/models/test_portable_checkpoint.py`` checks this and
that greedy generation is identical. Its image processor is whatever ``AutoImageProcessor`` reads
from the saved config (the PIL Qwen2-VL one without torchvision).

Two more files make the checkpoint complete for other consumers:

- ``tokenizer_config.json`` names the vision tokens (``image_token``, ``video_token``,
  ``vision_start_token``, ``vision_end_token``, top-level keys that transformers reads as named special
  tokens): PaddleOCRVLProcessor reads ``tokenizer.image_token`` / ``image_token_id``, and Qwen3VLProcessor
  prefers them when present. The token ids and the ``extra_special_tokens`` list do not change.
- ``generation_config.json`` lists the vision placeholder tokens in ``suppress_tokens``: prism-lab's
  rollout engines never sample them, and with the list plain ``generate`` does not either, so greedy
  generations agree token for token.
- ``video_preprocessor_config.json`` (a ``Qwen3VLVideoProcessor`` with the image processor's patch,
  merge and normalisation settings), as the Qwen3-VL hub checkpoints ship: with it,
  ``Qwen3VLProcessor.from_pretrained(ckpt)`` loads where torchvision is installed (vLLM loads the
  Qwen3-VL processor class explicitly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["PORTABLE_PROCESSOR_CLASS", "VIDEO_CONFIG_FILE", "make_portable", "vision_token_ids"]

#: The public transformers processor class a saved checkpoint names.
PORTABLE_PROCESSOR_CLASS = "PaddleOCRVLProcessor"
VIDEO_CONFIG_FILE = "video_preprocessor_config.json"

#: Named extra special tokens of Qwen3-VL's tokenizer (attribute name -> token).
VISION_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}


def vision_token_ids(config: Any) -> list[int]:
    """Ids of the vision placeholder tokens named in a Qwen3-VL config (never generated)."""
    ids = []
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        v = getattr(config, name, None) if config is not None else None
        if isinstance(v, int) and v >= 0:
            ids.append(v)
    return sorted(set(ids))


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _named_tokens(tokenizer_cfg: dict[str, Any], vocab: set[str]) -> dict[str, str]:
    """Top-level ``<name>_token`` entries for the vision tokens the vocabulary has and the config does not
    name yet. transformers 5 reads such keys as named model-specific special tokens
    (tokenization_utils_base.py, ``from_pretrained``); the ``extra_special_tokens`` list stays as saved."""
    return {k: v for k, v in VISION_TOKENS.items() if v in vocab and k not in tokenizer_cfg}


def _video_config(image_cfg: dict[str, Any]) -> dict[str, Any]:
    keep = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    return {"video_processor_type": "Qwen3VLVideoProcessor", **{k: image_cfg[k] for k in keep if k in image_cfg}}


def make_portable(out_dir: str | Path, tokenizer: Any, config: Any) -> None:
    """Rewrite the files ``save_pretrained`` wrote into ``out_dir`` for the model ``config`` and its
    ``tokenizer`` (see the module doc)."""
    d = Path(out_dir)
    gen_path = d / "generation_config.json"
    gen_cfg = _read(gen_path)
    suppress = vision_token_ids(config)
    if gen_cfg and suppress:
        gen_cfg["suppress_tokens"] = sorted(set(gen_cfg.get("suppress_tokens") or []) | set(suppress))
        _write(gen_path, gen_cfg)
    proc_path, tok_path = d / "processor_config.json", d / "tokenizer_config.json"
    proc_cfg, tok_cfg = _read(proc_path), _read(tok_path)
    vocab = set(tokenizer.get_vocab())
    if proc_cfg:
        proc_cfg["processor_class"] = PORTABLE_PROCESSOR_CLASS
        _write(proc_path, proc_cfg)
    if tok_cfg:
        tok_cfg["processor_class"] = PORTABLE_PROCESSOR_CLASS
        tok_cfg.update(_named_tokens(tok_cfg, vocab))
        _write(tok_path, tok_cfg)
    image_cfg = proc_cfg.get("image_processor") or _read(d / "preprocessor_config.json")
    if image_cfg and not (d / VIDEO_CONFIG_FILE).is_file():
        _write(d / VIDEO_CONFIG_FILE, _video_config(image_cfg))
