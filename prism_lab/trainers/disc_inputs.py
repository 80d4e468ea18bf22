"""The discriminator's scored sequences (docs/prism_method.md §4.3, §5.2, §6.1-§6.3, §10.3-§10.4).

Every score is the head output at the last valid token of ``prompt ⊕ segment``, where ``prompt`` is the
chat-templated prompt with the generation prompt (``...<|im_start|>assistant\\n``, images included) and
``segment`` a token list: a caption segment, a cot segment (think + answer, the caption removed, positions
continuing from the prompt), or a whole response (GAD variant). Warmup and alignment build their batches
with the same functions here, so only the *terminator convention* (docs/prism_method.md §10.3) differs between them:

``terminator="original"`` (reproduces the paper):
  * warmup: each segment is rendered as a full assistant turn, i.e. followed by the chat template's
    end-of-turn text (``<|im_end|>\\n``); the scored token is the one after ``<|im_end|>``;
  * online student caption: the generated tokens ``[0, b)``, ending on ``</caption>``;
  * online student cot: the generated tokens ``[b, L)``, ending on ``<|im_end|>`` when the rollout stopped;
  * online teacher caption/cot: the plain tokenisation of the parquet string followed by the first pad token
    (``<|endoftext|>``), because verl's EOS-based mask includes the first pad (Qwen3-VL's eos set contains the
    pad id). So, online, teacher and student segments end on different tokens, as in the original.
``terminator="uniform"`` (the recommendation of docs/prism_method.md §10.3): every segment, teacher or student, warmup or online,
  is its content tokens (trailing eos/pad removed) followed by exactly one ``<|im_end|>``.

Positions (docs/prism_method.md §10.4): ``"mrope"`` lets Qwen3-VL compute its 3-D M-RoPE ids (what a plain HF forward does, as in the
original warmup); ``"text_1d"`` feeds 1-D text positions ``cumsum(mask) - 1`` to every token, image tokens
included (the original stage-2 critic).

Batches reuse :func:`prism_lab.trainers.logprobs.make_sequence_batch`: ``[left-padded prompt | segment,
right-padded]`` with ``mm_token_type_ids`` zero over the segment and each row's images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor

from prism_lab.algos.boundary import caption_boundary_for_ids, split_lengths
from prism_lab.algos.disc_loss import router_load_balancing_loss
from prism_lab.models.discriminator import Discriminator, score_at_last_valid_token
from prism_lab.rollout import Prompt, build_prompt_inputs
from prism_lab.rollout.inputs import image_chunks_per_row
from prism_lab.trainers.logprobs import make_sequence_batch

__all__ = [
    "DiscTokens",
    "PromptBatch",
    "RolloutSplit",
    "Terminator",
    "Positions",
    "disc_tokens",
    "forward_scores",
    "limit_pixels",
    "online_student_segment",
    "online_teacher_segment",
    "plain_ids",
    "scored_inputs",
    "score_segments",
    "split_rollout",
    "text_1d_position_ids",
    "warmup_segment",
]

Terminator = Literal["original", "uniform"]
Positions = Literal["mrope", "text_1d"]


# ------------------------------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class DiscTokens:
    """Token ids the segment builders need, read from the (policy's) tokenizer."""

    im_end: int
    pad: int
    eos: tuple[int, ...]  # ids that end a generated response (generation_config eos)
    turn_suffix: tuple[int, ...]  # the chat template's end of an assistant turn, e.g. "<|im_end|>\n"


def _tok(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def disc_tokens(processor: Any, eos_ids: Sequence[int] | None = None) -> DiscTokens:
    """Read ``<|im_end|>``, the pad token and the template's assistant-turn suffix from ``processor``."""
    tok = _tok(processor)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if im_end is None or (tok.unk_token_id is not None and im_end == tok.unk_token_id):
        im_end = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else im_end
    eos = tuple(int(e) for e in (eos_ids if eos_ids is not None else [im_end]))
    marker = "\u2063SEG\u2063"
    suffix_ids: tuple[int, ...] = (int(im_end),)
    try:
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        if isinstance(rendered, str) and marker in rendered:
            tail = rendered.split(marker, 1)[1]
            if tail:
                suffix_ids = tuple(int(i) for i in tok(tail, add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - a tokenizer without a usable template: fall back to <|im_end|>
        pass
    return DiscTokens(im_end=int(im_end), pad=int(pad), eos=eos, turn_suffix=suffix_ids)


def plain_ids(processor: Any, text: str, max_tokens: int | None = None) -> list[int]:
    """Plain tokenisation (no chat template, no special tokens), right-truncated to ``max_tokens``."""
    ids = list(_tok(processor)(text, add_special_tokens=False)["input_ids"])
    return ids[:max_tokens] if max_tokens is not None else ids


def _strip_end(ids: Sequence[int], end_ids: Sequence[int]) -> list[int]:
    out = list(ids)
    while out and out[-1] in end_ids:
        out.pop()
    return out


def warmup_segment(ids: Sequence[int], toks: DiscTokens, terminator: Terminator = "original") -> list[int]:
    """A warmup segment's scored tokens: content + the template's turn suffix ("original") or + ``<|im_end|>``."""
    content = _strip_end(ids, (*toks.eos, toks.pad, toks.im_end))
    tail = list(toks.turn_suffix) if terminator == "original" else [toks.im_end]
    return content + tail


def online_student_segment(ids: Sequence[int], toks: DiscTokens, terminator: Terminator = "original") -> list[int]:
    """An online student caption/cot segment (generated token ids of the range)."""
    if terminator == "original":
        return list(ids) if len(ids) else [toks.pad]
    return _strip_end(ids, (*toks.eos, toks.pad, toks.im_end)) + [toks.im_end]


def online_teacher_segment(ids: Sequence[int], toks: DiscTokens, terminator: Terminator = "original") -> list[int]:
    """An online teacher segment: plain-tokenised parquet text + the first pad ("original") or + ``<|im_end|>``."""
    content = _strip_end(ids, (*toks.eos, toks.pad, toks.im_end))
    return content + ([toks.pad] if terminator == "original" else [toks.im_end])


# ------------------------------------------------------------------------------------------ rollout split
@dataclass(frozen=True)
class RolloutSplit:
    """Caption/cot split of one response (docs/prism_method.md §6.2b-c, §6.3)."""

    valid: bool  # format-valid (SPLIT_RE matched and a boundary b > 0 was found)
    boundary: int  # b (the fallback max(1, L // 2) when invalid)
    caption_ids: list[int]  # tokens [0, b)
    cot_ids: list[int]  # tokens [b, L) (possibly empty when b >= L)
    text: str


def split_rollout(processor: Any, token_ids: Sequence[int]) -> RolloutSplit:
    """Split a response at the caption boundary via token offsets (one decode, :mod:`prism_lab.algos.boundary`).

    ``token_ids`` = the valid response tokens including the final eos when generated. Invalid responses
    use the fallback boundary ``max(1, L // 2)``.
    """
    ids = [int(i) for i in token_ids]
    b, text = caption_boundary_for_ids(_tok(processor), ids)
    valid = b is not None and b > 0
    _, cap_end, cot_start, cot_end = split_lengths(len(ids), b, valid)
    return RolloutSplit(valid=valid, boundary=cap_end, caption_ids=ids[:cap_end],
                        cot_ids=ids[cot_start:min(cot_end, len(ids))], text=text)


# ------------------------------------------------------------------------------------------ images
def limit_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downscale (LANCZOS, aspect kept) so that ``w * h <= max_pixels`` (docs/prism_method.md §5.2); smaller images unchanged."""
    if max_pixels is None:
        return image
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = (max_pixels / float(w * h)) ** 0.5
    return image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.LANCZOS)


# ------------------------------------------------------------------------------------------ batches
@dataclass
class PromptBatch:
    """A left-padded processor batch of unique prompts, with each row's image patches."""

    batch: dict[str, Tensor]
    image_chunks: list[tuple[list[Tensor], Tensor]] | None

    @classmethod
    def build(cls, processor: Any, prompts: Sequence[Prompt]) -> PromptBatch:
        batch = build_prompt_inputs(processor, list(prompts))
        return cls(batch=batch, image_chunks=image_chunks_per_row(batch))

    def __len__(self) -> int:
        return int(self.batch["input_ids"].shape[0])


def text_1d_position_ids(attention_mask: Tensor) -> Tensor:
    """1-D text positions ``cumsum(mask) - 1`` (0 on left padding) for every token, image tokens included."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def scored_inputs(
    prompts: PromptBatch,
    rows: Sequence[int],
    segments: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    positions: Positions = "mrope",
    max_length: int | None = None,
) -> dict[str, Tensor]:
    """Model inputs for ``prompt[rows[i]] ⊕ segments[i]``. ``max_length`` right-truncates each segment so that
    the whole sequence (unpadded prompt + segment) fits; a prompt alone longer than it is left as is."""
    segs = [list(s) for s in segments]
    if max_length is not None:
        plen = prompts.batch["attention_mask"].sum(dim=1).tolist()
        segs = [s[: max(1, int(max_length) - int(plen[r]))] for s, r in zip(segs, rows)]
    sb = make_sequence_batch(prompts.batch, list(rows), segs, pad_token_id=pad_token_id,
                             image_chunks=prompts.image_chunks)
    inputs = dict(sb.inputs)
    if positions == "text_1d":
        inputs["position_ids"] = text_1d_position_ids(inputs["attention_mask"])
    elif positions != "mrope":
        raise ValueError(f"unknown positions {positions!r}; expected 'mrope' or 'text_1d'")
    return inputs


def _to(inputs: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def forward_scores(
    disc: Discriminator, inputs: dict[str, Tensor], *, with_aux: bool = False
) -> tuple[Tensor, Tensor | None]:
    """One forward: sequence scores ``[B]`` and (``with_aux`` and MoE) the router load-balancing loss."""
    device = next(disc.parameters()).device
    inputs = _to(inputs, device)
    want = with_aux and disc.is_moe
    per_token, router = disc(output_router_logits=want, **inputs)  # __call__: module hooks (FSDP2) run
    scores = score_at_last_valid_token(per_token, inputs["attention_mask"]).float()
    aux = None
    if want and router:
        tcfg = disc.config.get_text_config()
        aux = router_load_balancing_loss(router, int(tcfg.num_experts_per_tok), int(tcfg.num_experts),
                                         inputs["attention_mask"])
    return scores, aux


def score_segments(
    disc: Discriminator,
    prompts: PromptBatch,
    rows: Sequence[int],
    segments: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    positions: Positions = "mrope",
    micro_batch: int = 16,
    max_length: int | None = None,
) -> Tensor:
    """Scores ``[len(rows)]`` of ``prompt ⊕ segment``, in micro-batches; gradients flow when enabled
    (the caller picks ``torch.no_grad()`` and ``disc.eval()``/``train()``)."""
    out: list[Tensor] = []
    for start in range(0, len(rows), max(1, micro_batch)):
        sl = slice(start, start + max(1, micro_batch))
        inputs = scored_inputs(prompts, list(rows)[sl], list(segments)[sl], pad_token_id=pad_token_id,
                               positions=positions, max_length=max_length)
        s, _ = forward_scores(disc, inputs)
        out.append(s)
    if not out:
        return torch.zeros(0)
    return torch.cat(out)
