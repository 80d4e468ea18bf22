"""The PRISM response format and system prompt (docs/prism_method.md §2), shared by every stage."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError

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


def format_cot(think: str, answer: str) -> str:
    """The reasoning and answer blocks of a response, without a caption."""
    return f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"


def format_response(caption: str, think: str, answer: str) -> str:
    """Assemble a response in the paper's format (used by data generators and tests)."""
    return f"<caption>\n{caption}\n</caption>\n" + format_cot(think, answer)


def split_image_placeholders(text: str) -> list[dict]:
    """``"<image>How many?"`` -> ``[{"type": "image"}, {"type": "text", "text": "How many?"}]``."""
    items: list[dict] = []
    for k, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k > 0:
            items.append({"type": "image"})
        if part:
            items.append({"type": "text", "text": part})
    return items


#: Written next to a checkpoint by the training stages: how its training data was prompted.
PROMPTING_FILE = "prism_prompting.json"


@dataclass(frozen=True)
class Prompting:
    """How prompts are built for a checkpoint (the data convention it was trained with).

    ``system_prompt``: prepend the paper's system prompt as a system message (default True, as the
    paper's eval template does). ``yesno_instruction``: append "Answer Yes or No." to Yes/No questions.
    """

    system_prompt: bool = True
    yesno_instruction: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, checkpoint_dir: str | Path) -> Path:
        """Record the convention next to a checkpoint (training stages call this)."""
        path = Path(checkpoint_dir) / PROMPTING_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @staticmethod
    def carry_over(src_checkpoint_dir: str | Path, dst_checkpoint_dir: str | Path) -> None:
        """Copy the convention of an input checkpoint to a checkpoint trained from it."""
        src = Path(src_checkpoint_dir) / PROMPTING_FILE
        if src.is_file():
            (Path(dst_checkpoint_dir) / PROMPTING_FILE).write_text(src.read_text())

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path) -> "Prompting":
        """Read ``prism_prompting.json`` from the checkpoint directory (else its parent, the stage
        artifact); absent file = defaults. Unknown keys are ignored; known keys must be booleans."""
        d = Path(checkpoint_dir)
        for cand in (d / PROMPTING_FILE, d.parent / PROMPTING_FILE):
            if cand.is_file():
                return cls.from_file(cand)
        return cls()

    @classmethod
    def from_file(cls, path: str | Path) -> "Prompting":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object like {{\"system_prompt\": true}}")
        kw: dict[str, bool] = {}
        for name in ("system_prompt", "yesno_instruction"):
            if name in raw:
                if not isinstance(raw[name], bool):
                    raise ConfigError(f"{path}: field '{name}': expected true or false, got {raw[name]!r}")
                kw[name] = raw[name]
        return cls(**kw)
