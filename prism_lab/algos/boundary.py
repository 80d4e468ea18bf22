"""Caption/cot split of a response without re-decoding every prefix (docs/prism_method.md §6.2b-c, §6.3, §10.7;
every § here is a section of that page).

The original finds the boundary ``b`` as the smallest ``k`` such that ``decode(tokens[:k])`` contains the
caption group (``<caption>...</caption>``, tags included), decoding up to L prefixes per sample. Here the
response is decoded once, each token gets a ``(start, end)`` character span into that text, and ``b`` is
read off the spans: ``b = 1 + (index of the first token whose span ends at or after the caption's end)``.

Why this is exact: the caption group starts at the first non-blank character and ends at the first
``</caption>``, so no occurrence of the group string can end before the group's own end ``e``. A prefix
decode equals the text up to some character ``c`` (plus, at most, replacement characters for an
incomplete UTF-8 tail), hence it contains the group iff ``c >= e``. The token spans computed by
:func:`token_char_offsets` are exactly those ``c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prism_lab.prompts import SPLIT_RE

__all__ = [
    "REPLACEMENT_CHAR",
    "caption_boundary_for_ids",
    "find_caption_boundary",
    "fallback_boundary",
    "split_lengths",
    "token_char_offsets",
]

#: What a byte-level decoder emits for an incomplete UTF-8 sequence at the end of a prefix.
REPLACEMENT_CHAR = "\ufffd"

# How many already-committed tokens are re-decoded as left context for the next token. Some decoders
# (SentencePiece "▁", WordPiece "##") render a token differently at the start of a string, so the new
# text is taken as decode(context + new) minus decode(context).
_CONTEXT_TOKENS = 4


def find_caption_boundary(text: str, offsets: Sequence[tuple[int, int]]) -> int | None:
    """The smallest token count ``k`` whose decoded prefix contains the whole caption group.

    ``text`` is the decoded response, ``offsets[i]`` the ``(start, end)`` character span of token ``i`` in
    it (``end`` = how many characters of ``text`` the prefix ``tokens[:i+1]`` decodes to). Returns None when
    ``text`` does not match :data:`prism_lab.prompts.SPLIT_RE` (not format-valid) or when no prefix
    reaches the caption's end (offsets that do not cover the text).
    """
    m = SPLIT_RE.match(text)
    if m is None:
        return None
    cap_end = m.end(1)
    # A linear scan (not bisect): it stays exact even if a decoder ever produced non-monotone ends,
    # and integer comparisons are not the O(L) cost the original paid (that was L decodes).
    for i, (_, end) in enumerate(offsets):
        if end >= cap_end:
            return i + 1
    return None


def fallback_boundary(valid_len: int) -> int:
    """The boundary used for a format-invalid sample: ``max(1, L // 2)`` (§6.2c)."""
    return max(1, int(valid_len) // 2)


def split_lengths(valid_len: int, boundary: int | None, valid: bool) -> tuple[int, int, int, int]:
    """Token ranges ``(cap_start, cap_end, cot_start, cot_end)`` of one response (§6.2c, §6.3).

    ``valid_len`` = L, the valid response length including the final EOS. For a format-valid sample
    with a positive ``boundary`` b, caption = ``[0, b)`` and cot = ``[b, L)``. Otherwise (invalid, no
    boundary, or b <= 0) b falls back to ``max(1, L // 2)`` so every sample still yields two non-empty
    forwards. If the cot range is empty (b >= L) it keeps the single token at b: ``[b, b + 1)``; that
    token may lie past the valid length (a pad column of the response tensor), so the caller's response
    tensor must have at least ``b + 1`` columns, as verl's fixed-width (R) responses do.
    """
    L = int(valid_len)
    if L < 0:
        raise ValueError(f"valid_len must be >= 0, got {valid_len}")
    if not valid or boundary is None or boundary <= 0:
        b = fallback_boundary(L)
    else:
        b = int(boundary)
    cot_end = L if L > b else b + 1
    return 0, b, b, cot_end


def token_char_offsets(
    tokenizer: Any,
    ids: Sequence[int],
    *,
    skip_special_tokens: bool = True,
    **decode_kwargs: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """Decode ``ids`` once and give each token its ``(start, end)`` character span in the decoded text.

    ``end`` of token ``i`` is the number of leading characters of the full text that
    ``tokenizer.decode(ids[:i+1])`` reproduces, not counting replacement characters of an incomplete
    UTF-8 tail (a byte-level token can end in the middle of a character; the span then stops before
    that character and a later token completes it). Tokens that decode to nothing (special tokens
    with ``skip_special_tokens=True``) get an empty span. ``start`` = the previous token's ``end``.

    Cost: one full decode plus one decode of a few-token window per token, instead of one decode of
    every prefix. If a window's text ever disagrees with the full text (an unusual decoder), that
    token falls back to decoding its whole prefix, so the result is always exact.
    """
    ids = [int(i) for i in ids]
    kwargs = dict(decode_kwargs, skip_special_tokens=skip_special_tokens)
    text = tokenizer.decode(ids, **kwargs)
    offsets: list[tuple[int, int]] = []
    committed_tok = 0  # decode(ids[:committed_tok]) == text[:committed_chr], with a clean UTF-8 end
    committed_chr = 0
    commit_points = [0]  # every clean token boundary so far; the context window starts at one of them
    ctx_i = 0
    ctx_key: tuple[int, int] = (0, 0)
    ctx_text = ""
    prev_end = 0
    for k in range(1, len(ids) + 1):
        while ctx_i + 1 < len(commit_points) and commit_points[ctx_i + 1] <= committed_tok - _CONTEXT_TOKENS:
            ctx_i += 1
        ctx = commit_points[ctx_i]
        if (ctx, committed_tok) != ctx_key:  # the context text only changes when a token commits
            ctx_key = (ctx, committed_tok)
            ctx_text = tokenizer.decode(ids[ctx:committed_tok], **kwargs) if ctx < committed_tok else ""
        window = tokenizer.decode(ids[ctx:k], **kwargs)
        end: int | None = None
        clean = False
        if window.startswith(ctx_text):
            new = window[len(ctx_text) :]
            stripped = new.rstrip(REPLACEMENT_CHAR)
            if text.startswith(stripped, committed_chr):
                end = committed_chr + len(stripped)
                clean = stripped == new
        if end is None:  # exact but O(k) fallback
            prefix = tokenizer.decode(ids[:k], **kwargs)
            end = _common_prefix_len(prefix.rstrip(REPLACEMENT_CHAR), text)
            clean = False
        offsets.append((prev_end, end))
        prev_end = end
        if clean:
            committed_tok, committed_chr = k, end
            commit_points.append(k)
    return text, offsets


def caption_boundary_for_ids(
    tokenizer: Any, ids: Sequence[int], **decode_kwargs: Any
) -> tuple[int | None, str]:
    """``(boundary, decoded_text)`` for one response's valid token ids; boundary None = format-invalid."""
    text, offsets = token_char_offsets(tokenizer, ids, **decode_kwargs)
    return find_caption_boundary(text, offsets), text


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
