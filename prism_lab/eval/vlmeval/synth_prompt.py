"""The user text of one synthetic benchmark row, as the built-in backend asks it: shared by the VLMEvalKit
dataset classes (synth_datasets.py) without importing VLMEvalKit or datasets.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_na(v: Any) -> bool:
    import pandas as pd

    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def line_options(line: Mapping[str, Any]) -> dict[str, str]:
    import string

    return {c: str(line[c]) for c in string.ascii_uppercase
            if c in line and not is_na(line[c]) and str(line[c]).strip()}


def synth_prompt_text(line: Mapping[str, Any], *, kind: str, yesno_instruction: bool = True) -> str:
    """The built-in backend's user text for one TSV row (``BenchItem.prompt`` + the Yes/No ask)."""
    from prism_lab.data.synth.questions import format_mcq
    from prism_lab.eval.builtin import YESNO_INSTRUCTION

    hint = line.get("hint")
    question = str(line["question"])
    q = f"Hint: {hint}\n{question}" if (hint is not None and not is_na(hint) and str(hint)) else question
    options = line_options(line)
    text = format_mcq(q, options)
    if kind == "yesno" and not options and yesno_instruction:
        text = f"{text.rstrip()}\n{YESNO_INSTRUCTION}"
    return text
