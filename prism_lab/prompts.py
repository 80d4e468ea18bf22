"""The PRISM response format and system prompt (prism_spec.md section 2), shared by every stage."""

from __future__ import annotations

import re

SYSTEM_PROMPT = (
    "You are a helpful scientific assistant.\n"
    "Answer the user's question based on the image provided.\n"
    "\n"
    "Your output must strictly follow this XML format:\n"
    "\n"
    "<caption>\n"
    "- [Briefly describe the image style, key objects, and text using bullet points]\n"
    "</caption>\n"
    "<think>\n"
    "[Reason step-by-step to solve the problem]\n"
    "</think>\n"
    "<answer>\n"
    "[Final answer ONLY]\n"
    "</answer>"
)

#: Validity regex of the critic and of the RLVR reward: anchored, DOTALL, whitespace allowed around blocks.
FORMAT_RE = re.compile(
    r"^\s*<caption>.*?</caption>\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL
)

#: Critic split: group 1 = caption block with tags; group 2 = think + answer blocks (the "cot" segment).
SPLIT_RE = re.compile(
    r"^\s*(<caption>.*?</caption>)\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$", re.DOTALL
)

#: Placeholder for an image inside a user message's text (ShareGPT/LLaMA-Factory and verl schemas).
IMAGE_PLACEHOLDER = "<image>"

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def is_format_valid(text: str) -> bool:
    """True when ``text`` follows the caption/think/answer format exactly."""
    return FORMAT_RE.match(text) is not None


def extract_answer(text: str) -> str | None:
    """The stripped content of the first ``<answer>`` block, or None when there is none."""
    m = ANSWER_RE.search(text)
    return None if m is None else m.group(1).strip()


def format_response(caption: str, think: str, answer: str) -> str:
    """Assemble a response in the paper's format (used by data generators and tests)."""
    return f"<caption>\n{caption}\n</caption>\n<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"


def split_image_placeholders(text: str) -> list[dict]:
    """``"<image>How many?"`` -> ``[{"type": "image"}, {"type": "text", "text": "How many?"}]``."""
    items: list[dict] = []
    for k, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k > 0:
            items.append({"type": "image"})
        if part:
            items.append({"type": "text", "text": part})
    return items
