"""Model inputs from chat messages and images, for every stage that feeds the policy.

* :func:`to_content_messages` turns ShareGPT messages (``"<image>question"`` strings) into the content
  lists chat templates expect (``{"type": "image"}`` in place of each ``<image>``).
* :func:`encode_chat` encodes one conversation for training: the chat template is rendered as text,
  split at the assistant spans (the template's ``{% generation %}`` blocks; for templates without
  them, the final assistant turn), and each piece goes through the processor (which expands image
  placeholders and preprocesses the images). ``labels`` equal ``input_ids`` on assistant tokens
  (content + ``<|im_end|>``) and -100 elsewhere. Pieces are tokenized separately, as LLaMA-Factory does,
  so the response tokens are exactly what generation after the prompt would produce.
* :func:`pad_batch` pads encoded rows dynamically (right padding for training, left for generation)
  and concatenates ``pixel_values`` / ``image_grid_thw``.
* :class:`SFTCollator` does both for :class:`~prism_lab.data.sft_json.SFTExample` rows and raises a
  DataError naming the file and row when one cannot be encoded; ``length_groups`` cuts one batch into runs of
  similar length (:func:`length_group_indices`), each padded on its own.
* :func:`encode_prompts` builds left-padded generation inputs (prompt + generation prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from prism_lab.errors import DataError
from prism_lab.prompts import IMAGE_PLACEHOLDER, split_image_placeholders  # noqa: E402

T = TypeVar("T")

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------ messages
def to_content_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """ShareGPT messages -> chat-template messages.

    User/system string contents become content lists with ``{"type": "image"}`` wherever ``<image>``
    stood and ``{"type": "text"}`` for the text between; assistant string contents stay strings.
    Contents that are already lists are passed through.
    """
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str) and m["role"] != "assistant" and IMAGE_PLACEHOLDER in content:
            content = split_image_placeholders(content)
        out.append({"role": m["role"], "content": content})
    return out


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _render(processor, messages: list[dict[str, Any]], *, generation_spans: bool, add_generation_prompt: bool = False):
    from transformers.utils.chat_template_utils import render_jinja_template

    template = getattr(processor, "chat_template", None) or _tokenizer(processor).chat_template
    if not template:
        raise DataError("the processor has no chat template")
    texts, spans = render_jinja_template(
        conversations=[messages], chat_template=template, return_assistant_tokens_mask=generation_spans,
        add_generation_prompt=add_generation_prompt, **_tokenizer(processor).special_tokens_map,
    )
    return texts[0], (spans[0] if spans else [])


def assistant_spans(processor, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the loss covers.

    Uses the template's generation blocks when it has them; otherwise the final assistant turn: from
    the end of the rendered prompt (with generation prompt) up to and including the end-of-turn token.
    """
    text, spans = _render(processor, messages, generation_spans=True)
    spans = [(int(a), int(b)) for a, b in spans if b > a]
    if spans:
        return text, spans
    if messages[-1]["role"] != "assistant":
        return text, []
    prompt, _ = _render(processor, messages[:-1], generation_spans=False, add_generation_prompt=True)
    if not text.startswith(prompt):
        raise DataError("the chat template renders the prompt differently inside the full conversation; "
                        "add {% generation %} blocks to it")
    eos = _tokenizer(processor).eos_token or ""
    end = text.find(eos, len(prompt)) if eos else -1
    end = len(text) if end < 0 else end + len(eos)
    return text, [(len(prompt), end)]


# ------------------------------------------------------------------------------------------ encoding
@dataclass
class EncodedRow:
    """One encoded conversation (1-D tensors, no padding)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    mm_token_type_ids: torch.Tensor | None
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def _image_token(processor) -> str | None:
    return getattr(processor, "image_token", None)


def _split_pieces(processor, messages: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces at the loss spans."""
    text, spans = assistant_spans(processor, to_content_messages(messages))
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for a, b in sorted(spans):
        if a > pos:
            pieces.append((text[pos:a], False))
        pieces.append((text[a:b], True))
        pos = b
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces


def encode_chats(processor, conversations: Sequence[Sequence[dict[str, Any]]], images: Sequence[Sequence[Any]], *,
                 max_length: int | None = None) -> list[EncodedRow]:
    """Encode a batch of conversations for training (see the module docstring and :func:`encode_chat`).

    All pieces that hold images go through one processor call, all text-only pieces through one
    tokenizer call; the result equals encoding each conversation on its own.
    """
    if len(conversations) != len(images):
        raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
    tok = _tokenizer(processor)
    img_tok = _image_token(processor)
    plan: list[list[tuple[str, bool, list[Any]]]] = []
    for msgs, imgs in zip(conversations, images):
        pieces = _split_pieces(processor, msgs)
        imgs = list(imgs)
        counts = [p.count(img_tok) if img_tok else 0 for p, _ in pieces]
        if sum(counts) != len(imgs):
            raise DataError(f"{sum(counts)} image placeholders but {len(imgs)} images")
        row, k = [], 0
        for (piece, is_asst), c in zip(pieces, counts):
            row.append((piece, is_asst, imgs[k:k + c]))
            k += c
        plan.append(row)

    mm_texts = [p for row in plan for p, _, ims in row if ims]
    plain_texts = [p for row in plan for p, _, ims in row if not ims]
    mm_ids: list[torch.Tensor] = []
    mm_types: list[torch.Tensor] = []
    mm_pix: list[torch.Tensor] = []
    mm_thw: list[torch.Tensor] = []
    if mm_texts:
        flat = [im for row in plan for _, _, ims in row for im in ims]
        out = processor(text=mm_texts, images=flat, return_tensors="pt", padding=True, add_special_tokens=False)
        keep = out["attention_mask"].bool()
        for i in range(len(mm_texts)):
            mm_ids.append(out["input_ids"][i][keep[i]])
            mm_types.append(out["mm_token_type_ids"][i][keep[i]] if "mm_token_type_ids" in out
                            else torch.zeros_like(mm_ids[-1]))
        thw = out["image_grid_thw"]
        patches = thw.prod(dim=-1).tolist()
        pix_chunks = list(torch.split(out["pixel_values"], patches))
        img_i = 0
        for row in plan:
            for _, _, ims in row:
                if ims:
                    n = len(ims)
                    mm_pix.append(torch.cat(pix_chunks[img_i:img_i + n]))
                    mm_thw.append(thw[img_i:img_i + n])
                    img_i += n
    plain_ids = [torch.tensor(x, dtype=torch.long) for x in tok(plain_texts, add_special_tokens=False)["input_ids"]] \
        if plain_texts else []

    img_id = tok.convert_tokens_to_ids(img_tok) if img_tok else None
    rows: list[EncodedRow] = []
    mi = pi = 0
    for row in plan:
        ids, labels, types, pix, thw_list = [], [], [], [], []
        for _, is_asst, ims in row:
            if ims:
                pid, ptype = mm_ids[mi], mm_types[mi]
                pix.append(mm_pix[mi])
                thw_list.append(mm_thw[mi])
                mi += 1
            else:
                pid = plain_ids[pi]
                ptype = torch.zeros_like(pid)
                pi += 1
            ids.append(pid)
            types.append(ptype)
            labels.append(pid.clone() if is_asst else torch.full_like(pid, IGNORE_INDEX))
        input_ids, label_ids, type_ids = torch.cat(ids), torch.cat(labels), torch.cat(types)
        if max_length is not None and input_ids.shape[0] > max_length:
            if img_id is not None and bool((input_ids[max_length:] == img_id).any()):
                raise DataError(f"{input_ids.shape[0]} tokens with image tokens beyond max_length {max_length}; "
                                "raise max_length or use smaller images")
            input_ids, label_ids, type_ids = input_ids[:max_length], label_ids[:max_length], type_ids[:max_length]
        rows.append(EncodedRow(input_ids=input_ids, labels=label_ids, mm_token_type_ids=type_ids,
                               pixel_values=torch.cat(pix) if pix else None,
                               image_grid_thw=torch.cat(thw_list) if thw_list else None))
    return rows


def encode_chat(processor, messages: Sequence[dict[str, Any]], images: Sequence[Any] = (), *,
                max_length: int | None = None) -> EncodedRow:
    """Encode one conversation for training (see the module docstring).

    ``messages`` may be ShareGPT style (``<image>`` in strings) or content lists; ``images`` are PIL
    images in placeholder order. Sequences longer than ``max_length`` are cut from the right; a cut
    through image tokens is an error (the vision features would not match).
    """
    return encode_chats(processor, [messages], [images], max_length=max_length)[0]


def pad_batch(rows: Sequence[EncodedRow], *, pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest row. Returns input_ids, attention_mask, labels, and mm_token_type_ids /
    pixel_values / image_grid_thw when present."""
    if not rows:
        raise ValueError("pad_batch needs at least one row")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    width = max(len(r) for r in rows)
    b = len(rows)
    input_ids = torch.full((b, width), int(pad_token_id), dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    has_mm = all(r.mm_token_type_ids is not None for r in rows)
    mm = torch.zeros((b, width), dtype=torch.long) if has_mm else None
    for i, r in enumerate(rows):
        n = len(r)
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[i, sl] = r.input_ids
        attention[i, sl] = 1
        labels[i, sl] = r.labels
        if mm is not None:
            mm[i, sl] = r.mm_token_type_ids
    batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if mm is not None:
        batch["mm_token_type_ids"] = mm
    pix = [r.pixel_values for r in rows if r.pixel_values is not None]
    if pix:
        batch["pixel_values"] = torch.cat(pix)
        batch["image_grid_thw"] = torch.cat([r.image_grid_thw for r in rows if r.image_grid_thw is not None])
    return batch


def length_group_indices(lengths: Sequence[int], groups: int) -> list[list[int]]:
    """Row indices sorted by length (ties in row order) and cut into ``groups`` runs whose sizes differ by at most
    one, larger runs first; never an empty run (fewer groups when there are fewer rows).

    Padding each run to its own longest row spends less compute on padding than one batch padded to the longest
    of all, and, with the loss summed over the step's label tokens, gives the same gradient."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    return even_split(sorted(range(len(lengths)), key=lambda i: lengths[i]), groups)


def even_split(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` cut in order into ``min(parts, len(items))`` runs whose sizes differ by at most one, larger runs
    first (no run for no items)."""
    k = min(parts, len(items))
    size, extra = divmod(len(items), k) if k > 0 else (0, 0)
    out, start = [], 0
    for g in range(max(k, 0)):
        end = start + size + (1 if g < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def _pad_id(processor) -> int:
    tok = _tokenizer(processor)
    pid = tok.pad_token_id
    if pid is None:
        pid = tok.eos_token_id
    if pid is None:
        raise DataError("the tokenizer has neither a pad nor an eos token")
    return int(pid)


class SFTCollator:
    """Encode and pad a list of SFT examples (``SFTExample``: ``messages``, ``load_images()``,
    ``source``, ``row``) into one right-padded training batch."""

    def __init__(self, processor, *, max_length: int | None = None, padding_side: str = "right") -> None:
        self.processor = processor
        self.max_length = max_length
        self.padding_side = padding_side
        self.pad_token_id = _pad_id(processor)

    def encode(self, example) -> EncodedRow:
        where = f"{getattr(example, 'source', '') or '<data>'}: row {getattr(example, 'row', '?')}"
        try:
            images = example.load_images()
            return encode_chat(self.processor, example.messages, images, max_length=self.max_length)
        except DataError as exc:
            msg = str(exc)
            raise DataError(msg if msg.startswith(where) else f"{where}: cannot encode ({msg})") from None
        except Exception as exc:  # processor/tokenizer failures on odd rows
            raise DataError(f"{where}: cannot encode ({type(exc).__name__}: {exc})") from None

    def encode_many(self, examples: Sequence[Any]) -> list[EncodedRow]:
        """Encode a batch in one go; on failure, encode row by row to name the row that fails."""
        try:
            images = [e.load_images() for e in examples]
            return encode_chats(self.processor, [e.messages for e in examples], images, max_length=self.max_length)
        except Exception:  # noqa: BLE001 - find and name the culprit
            rows = [self.encode(e) for e in examples]
            return rows  # (every row encoded on its own: the batch failure was not row-specific)

    def __call__(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        return pad_batch(self.encode_many(examples), pad_token_id=self.pad_token_id, padding_side=self.padding_side)

    def length_groups(self, examples: Sequence[Any], groups: int) -> list[dict[str, torch.Tensor]]:
        """The rows as ``groups`` batches of similar length (:func:`length_group_indices`), each padded to its
        own longest row: the same rows as ``self(examples)`` with less padding."""
        rows = self.encode_many(examples)
        return [pad_batch([rows[i] for i in idx], pad_token_id=self.pad_token_id, padding_side=self.padding_side)
                for idx in length_group_indices([len(r) for r in rows], groups)]


def encode_prompts(processor, prompts: Sequence[Sequence[dict[str, Any]]], images: Sequence[Sequence[Any]], *,
                   add_generation_prompt: bool = True) -> dict[str, torch.Tensor]:
    """Left-padded generation inputs for a batch of prompts (messages without the final answer)."""
    texts = [_render(processor, to_content_messages(p), generation_spans=False,
                     add_generation_prompt=add_generation_prompt)[0] for p in prompts]
    flat = [im for ims in images for im in ims]
    tok = _tokenizer(processor)
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "add_special_tokens": False}
        if flat:
            kwargs["images"] = flat
        out = processor(**kwargs)
    finally:
        tok.padding_side = old_side
    return dict(out)
