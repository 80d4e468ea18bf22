"""A small, locally trained Qwen-style tokenizer for the tiny models (no hub access).

Byte-level BPE (lossless for any string, no UNK), every digit its own token, the Qwen chat special
tokens, the PRISM response-format tags as single non-special tokens, and a Qwen-style chat template.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from prism_lab.errors import ConfigError

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

#: Special tokens, in id order (ids 0..6). Skipped by ``decode(skip_special_tokens=True)``.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

#: Response-format tags: one token each, NOT special, so decoding keeps them.
FORMAT_TAGS: tuple[str, ...] = ("<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>")

# Qwen-style template. Newlines are emitted inside string literals because `{%-` strips the
# preceding literal text. The assistant turn body is wrapped in a generation block so that
# `return_assistant_tokens_mask=True` works (assistant-only SFT losses). No default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + len(FORMAT_TAGS)


def build_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    ``vocab_size`` is the total size including special tokens and format tags (the trainer may stop
    earlier on a small corpus). Training is deterministic: the same texts give an identical
    ``tokenizer.json``. ``seed`` is accepted for API symmetry with the model builders; BPE training
    has no randomness, so it does not change the result.
    """
    del seed  # BPE training is deterministic; kept for a uniform builder signature.
    if vocab_size < _MIN_VOCAB:
        raise ConfigError(f"tokenizer vocab_size must be at least {_MIN_VOCAB} (256 bytes + special tokens), got {vocab_size}")
    corpus = [t for t in texts if t]

    tk = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(FORMAT_TAGS),
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tk.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False) for t in FORMAT_TAGS])

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        padding_side="right",
    )
    return tok


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the Qwen chat/vision special tokens in ``tokenizer`` (works for real Qwen3-VL tokenizers too)."""
    out: dict[str, int] = {}
    for name, tok in (
        ("pad", PAD_TOKEN),
        ("im_start", IM_START),
        ("im_end", IM_END),
        ("vision_start", VISION_START),
        ("vision_end", VISION_END),
        ("image", IMAGE_PAD),
        ("video", VIDEO_PAD),
    ):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
            raise ConfigError(f"tokenizer has no {tok!r} token; expected a Qwen-style tokenizer")
        out[name] = int(tid)
    return out
