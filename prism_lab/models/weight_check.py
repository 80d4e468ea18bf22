"""The strict weight check: the tensors a checkpoint's safetensors headers declare against the tensors of
the model its config.json describes, built on PyTorch's ``meta`` device.

It depends on no loading feature of transformers (no ``from_pretrained``, no ``device_map``, no hub
kernels): the checkpoint side is the safetensors headers (``checkpoint.safetensors_header``: names,
dtypes, shapes; no tensor data, no pickle), the model side is the model class built from its config
under ``torch.device("meta")`` (no memory). What it accepts:

- **names**: the model's ``state_dict`` names. A tensor the checkpoint lacks is missing, one the model
  lacks is unexpected. Names that share one tensor in the model (tied embeddings: ``lm_head.weight`` is
  ``model.language_model.embed_tokens.weight`` when ``tie_word_embeddings``) need one of them.
- **the name mapping transformers 5.24 applies to Qwen3-VL** (``conversion_mapping.py`` and the
  ``base_model_prefix`` rule of ``modeling_utils.py``): a name without the model's ``model.`` prefix
  is read with it (a checkpoint of the bare ``Qwen3VLModel``: ``language_model.*``, ``visual.*``), and
  the ``legacy`` rename of ``model.language_model.model.*`` to ``model.language_model.*``. prism-lab's
  checkpoints and the official Qwen3-VL ones use the model's own names
  (``model.language_model.*``, ``model.visual.*``, ``lm_head.weight``). The pre-transformers-5 text
  layout (``model.layers.*``) is not mapped for Qwen3-VL by transformers 5.24, so it is refused
  (with a hint) rather than passed to a loader that would leave those weights at random init.
- **shapes**: equal to the model's; for a ``qwen3_vl_moe`` model the fused expert tensors
  (``mlp.experts.gate_up_proj`` / ``down_proj``) may also be stored with their last two dimensions
  swapped, the layout of the official MoE checkpoints that transformers transposes on load.
- **dtypes**: any floating type the loader casts from (F64, F32, F16, BF16), whatever ``dtype`` the
  config names (a checkpoint saved in bf16 for a float32 config is fine); integer, boolean and 8-bit
  float tensors are refused (quantised weights need a loader feature this check does not assume).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import CheckpointError

#: safetensors dtypes of weights the loader casts to the model's dtype.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

#: (pattern, replacement) renames transformers 5.24 applies when loading a Qwen3-VL checkpoint.
LEGACY_RENAMES = ((re.compile(r"^model\.language_model\.model\."), "model.language_model."),)

#: Tensors of a qwen3_vl_moe model that may be stored with their last two dimensions swapped.
_TRANSPOSABLE = re.compile(r"\.mlp\.experts\.(gate_up_proj|down_proj)$")

#: The pre-transformers-5 text layout, which transformers 5.24 does not map for Qwen3-VL.
_OLD_TEXT_LAYOUT = re.compile(r"^model\.(layers\.|embed_tokens\.|norm\.)")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def _short(names: list[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


# ------------------------------------------------------------------------------------ checkpoint side
def checkpoint_tensors(d: Path) -> dict[str, TensorInfo]:
    """Every tensor the checkpoint in ``d`` declares, from its safetensors headers. With an index
    (model.safetensors.index.json) each tensor it names must be in the shard it names."""
    from prism_lab.models.checkpoint import safetensors_header, weight_files

    found: dict[str, TensorInfo] = {}
    where: dict[str, Path] = {}
    for path in weight_files(d):
        for name, info in safetensors_header(path).items():
            if name in found:
                raise CheckpointError(f"{d}: tensor {name!r} is stored twice ({where[name].name} and {path.name})")
            found[name] = TensorInfo(str(info.get("dtype")), tuple(info["shape"]))
            where[name] = path
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]  # checked by weight_files
        absent = [n for n, shard in weight_map.items() if n not in found or where[n].name != Path(shard).name]
        if absent:
            raise CheckpointError(f"{index}: weight_map: {_short(absent)} not in the shard it names")
    return found


def canonical_name(name: str, expected: set[str], prefix: str) -> str:
    """The model name a checkpoint name is loaded as (see the module doc: transformers 5.24's mapping)."""
    for pattern, repl in LEGACY_RENAMES:
        name = pattern.sub(repl, name)
    if name not in expected and prefix and f"{prefix}.{name}" in expected:
        return f"{prefix}.{name}"
    return name


# ---------------------------------------------------------------------------------------- model side
@dataclass(frozen=True)
class ExpectedTensors:
    """The tensors a model holds: name -> shape, and the groups of names that share one tensor."""

    shapes: dict[str, tuple[int, ...]]
    aliases: tuple[frozenset[str], ...]
    prefix: str = "model"
    transposable: bool = False  # qwen3_vl_moe fused experts (see the module doc)


def expected_tensors(model: Any) -> ExpectedTensors:
    """The persistent tensors of ``model`` (any device, meta included); tied names form one group."""
    state = model.state_dict(keep_vars=True)
    groups: dict[int, set[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), set()).add(name)
    return ExpectedTensors(
        shapes={name: tuple(t.shape) for name, t in state.items()},
        aliases=tuple(frozenset(g) for g in groups.values() if len(g) > 1),
        prefix=getattr(model, "base_model_prefix", "") or "",
        transposable=getattr(model.config, "model_type", "") == "qwen3_vl_moe",
    )


# ---------------------------------------------------------------------------------------- comparison
def _shape_fits(name: str, have: tuple[int, ...], want: tuple[int, ...], transposable: bool) -> bool:
    if have == want:
        return True
    swapped = (*want[:-2], want[-1], want[-2]) if len(want) >= 2 else want
    return transposable and _TRANSPOSABLE.search(name) is not None and have == swapped


def compare(found: dict[str, TensorInfo], expected: ExpectedTensors) -> list[str]:
    """What keeps the checkpoint's tensors from filling the model exactly; [] when they do."""
    names = set(expected.shapes)
    mapped: dict[str, tuple[str, TensorInfo]] = {}
    unexpected = []
    for raw, info in found.items():
        name = canonical_name(raw, names, expected.prefix)
        if name in names and name not in mapped:
            mapped[name] = (raw, info)
        else:
            unexpected.append(raw)
    optional = {n for group in expected.aliases if group & set(mapped) for n in group}
    missing = [n for n in names if n not in mapped and n not in optional]
    problems = []
    if missing:
        problems.append(f"missing {_short(missing)}")
    if unexpected:
        hint = (" (the pre-transformers-5 layout model.layers.*, which transformers does not map for Qwen3-VL: "
                "rename them to model.language_model.*)" if any(_OLD_TEXT_LAYOUT.match(n) for n in unexpected) else "")
        problems.append(f"unexpected {_short(unexpected)}{hint}")
    misshaped = sorted((raw, info.shape, expected.shapes[name]) for name, (raw, info) in mapped.items()
                       if not _shape_fits(name, info.shape, expected.shapes[name], expected.transposable))
    if misshaped:
        raw, have, want = misshaped[0]
        problems.append(f"{len(misshaped)} mis-shaped ({raw}: checkpoint {have} vs model {want})")
    bad_dtype = sorted((raw, info.dtype) for raw, info in mapped.values() if info.dtype not in FLOAT_DTYPES)
    if bad_dtype:
        raw, dtype = bad_dtype[0]
        problems.append(f"{len(bad_dtype)} of a dtype the model cannot take ({raw}: {dtype}; expected one of "
                        f"{', '.join(FLOAT_DTYPES)})")
    return problems


# ------------------------------------------------------------------------------------------ the check
def meta_model(d: Path, model_type: str) -> Any:
    """The model config.json describes, built on the meta device (no weights, no memory)."""
    import torch
    from transformers import AutoConfig

    from prism_lab.models.checkpoint import model_class

    config = AutoConfig.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        return model_class(model_type)(config)


def verify_weights(d: str | Path) -> None:
    """Refuse a checkpoint whose weights do not fill the model its config.json describes exactly.

    A problem with the weights names them; a failure to build the model from config.json (a field
    transformers refuses) or of the check itself says that the weights could not be checked."""
    from prism_lab.models.checkpoint import inspect_checkpoint

    d = Path(d)
    cfg = inspect_checkpoint(d)
    try:
        model = meta_model(d, cfg["model_type"])
    except Exception as exc:  # noqa: BLE001 - transformers refusing the user's config, in its own words
        raise CheckpointError(f"could not check the weights of {d}: building the model from {d / 'config.json'} "
                              f"failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
    try:
        expected = expected_tensors(model)
    except Exception as exc:  # noqa: BLE001 - not the checkpoint's fault: say so
        raise CheckpointError(f"could not check the weights of {d}: listing the model's tensors failed "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
    problems = compare(checkpoint_tensors(d), expected)
    if problems:
        raise CheckpointError(f"{d}: the weights do not fit the model config.json describes: " + "; ".join(problems))
