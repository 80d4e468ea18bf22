"""The PRISM paper's result tables as data: accuracy in %, exactly as printed on the project page
(XIAO4579/PRISM, branch gh-pages at 36a64c1, index.html; docs/prism_method.md §9).

Rows are keyed by the labels the report uses ("Instruct" = the base model, "+SFT", "SFT+GRPO", ...,
"PRISM", "PRISM+GRPO", ...). ``Avg`` is the paper's printed average over its seven benchmarks.
"""

from __future__ import annotations

#: The paper's benchmark columns, in table order.
PAPER_COLUMNS: tuple[str, ...] = (
    "MathVista", "MathVerse", "MathVision", "WeMath", "MMMU", "MMMU-Pro", "HalluBench",
)

#: Other spellings of the columns (the paper's abbreviations, VLMEvalKit names) -> canonical column.
COLUMN_ALIASES: dict[str, str] = {
    "mvista": "MathVista", "mathvista": "MathVista", "mathvista_mini": "MathVista",
    "mverse": "MathVerse", "mathverse": "MathVerse", "mathverse_mini": "MathVerse",
    "mvision": "MathVision", "mathvision": "MathVision", "mathvision_mini": "MathVision",
    "wemath": "WeMath",
    "mmmu": "MMMU", "mmmu_dev_val": "MMMU",
    "mmmu-pro": "MMMU-Pro", "mmmu_pro": "MMMU-Pro", "mmmupro": "MMMU-Pro",
    "hallubench": "HalluBench", "hallu": "HalluBench", "hallusionbench": "HalluBench",
}

#: Base-model row label in the paper.
BASE_LABEL = "Instruct"

_4B = {
    "Instruct": (74.9, 59.0, 36.5, 70.7, 63.6, 45.1, 68.2, 59.7),
    "+SFT": (71.5, 58.4, 31.9, 70.6, 53.6, 42.8, 69.1, 56.8),
    "SFT+GRPO": (75.7, 64.5, 35.5, 77.8, 60.1, 47.3, 72.0, 61.8),
    "SFT+DAPO": (74.3, 65.1, 42.7, 77.2, 62.5, 48.0, 72.3, 63.2),
    "SFT+GSPO": (75.2, 64.0, 37.5, 78.4, 58.7, 45.6, 71.9, 61.6),
    "PRISM": (71.0, 59.5, 30.6, 67.5, 56.3, 42.8, 72.6, 57.2),
    "PRISM+GRPO": (77.9, 68.6, 45.4, 82.9, 64.1, 49.7, 74.8, 66.2),
    "PRISM+DAPO": (77.8, 68.2, 46.7, 83.9, 64.1, 50.4, 72.9, 66.3),
    "PRISM+GSPO": (77.5, 66.6, 46.7, 82.3, 63.2, 51.1, 72.9, 65.8),
}
_8B = {
    "Instruct": (76.0, 62.4, 43.7, 71.7, 65.6, 52.3, 71.6, 63.3),
    "+SFT": (70.2, 60.4, 32.6, 73.4, 56.3, 42.9, 71.2, 58.1),
    "SFT+GRPO": (75.9, 66.9, 37.1, 79.7, 62.6, 48.8, 71.9, 63.3),
    "SFT+DAPO": (77.0, 69.8, 41.5, 84.3, 63.0, 49.0, 71.5, 65.2),
    "SFT+GSPO": (75.9, 65.5, 41.1, 80.8, 58.2, 47.8, 73.6, 63.3),
    "PRISM": (71.4, 62.2, 37.1, 73.1, 58.4, 43.4, 69.5, 59.3),
    "PRISM+GRPO": (78.3, 71.3, 52.0, 86.4, 66.6, 53.3, 77.2, 69.3),
    "PRISM+DAPO": (78.2, 70.9, 52.0, 86.2, 66.2, 52.4, 76.1, 68.9),
    "PRISM+GSPO": (77.9, 71.5, 51.6, 85.9, 65.2, 52.7, 75.8, 68.7),
}


def _as_dicts(rows: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    return {label: dict(zip((*PAPER_COLUMNS, "Avg"), values, strict=True)) for label, values in rows.items()}


#: size ("4b", "8b") -> row label -> column (PAPER_COLUMNS + "Avg") -> accuracy %.
PAPER_TABLES: dict[str, dict[str, dict[str, float]]] = {"4b": _as_dicts(_4B), "8b": _as_dicts(_8B)}

#: The paper's Avg deltas PRISM+X − SFT+X (size -> algorithm -> points); "+4.4 / +6.0" is GRPO.
PAPER_AVG_DELTAS: dict[str, dict[str, float]] = {
    "4b": {"grpo": 4.4, "dapo": 3.1, "gspo": 4.2},
    "8b": {"grpo": 6.0, "dapo": 3.7, "gspo": 5.4},
}

#: Alignment alone (PRISM − +SFT, Avg points).
PAPER_ALIGN_ONLY_DELTAS: dict[str, float] = {"4b": 0.4, "8b": 1.2}


def _ablation(values: tuple[float, ...], avg: float) -> dict[str, float]:
    return {**dict(zip(PAPER_COLUMNS, values, strict=True)), "Avg": avg}


#: Ablation on Qwen3-VL-4B with GRPO (docs/prism_method.md §9). Rows that the paper states equal another
#: row ("PRISM full" = PRISM+GRPO, "w/o Alignment" = SFT+GRPO, "SFT-1.37M" = full) reuse that row.
PAPER_ABLATION_4B_GRPO: dict[str, dict[str, float]] = {
    "PRISM (full)": PAPER_TABLES["4b"]["PRISM+GRPO"],
    "Dense 4B discriminator": _ablation((74.6, 63.7, 41.8, 76.9, 61.3, 47.1, 74.0), 62.8),
    "Text-only discriminator": _ablation((74.0, 59.5, 42.8, 76.8, 62.7, 48.5, 71.6), 62.3),
    "w/o SFT": _ablation((62.4, 47.6, 25.9, 55.7, 51.4, 36.5, 66.1), 49.4),
    "w/o Alignment": PAPER_TABLES["4b"]["SFT+GRPO"],
    "SFT-107K": _ablation((72.3, 67.0, 43.1, 76.9, 60.6, 49.0, 68.3), 62.5),
    "SFT-1.37M": PAPER_TABLES["4b"]["PRISM+GRPO"],
}


def canonical_column(name: str | None) -> str | None:
    """The paper column a name stands for (exact column, an alias, case-insensitive), else None."""
    if not name:
        return None
    if name in PAPER_COLUMNS:
        return name
    low = name.strip().lower()
    for col in PAPER_COLUMNS:
        if col.lower() == low:
            return col
    return COLUMN_ALIASES.get(low)


def paper_size(size: object) -> str | None:
    """"4b"/"8b" (any case, optional "qwen3-vl-" prefix) -> the paper's table key, else None."""
    s = str(size).strip().lower().removeprefix("qwen3-vl-")
    return s if s in PAPER_TABLES else None


def paper_row(size: object, label: str) -> dict[str, float] | None:
    """The paper's row for one of our row labels ("Instruct", "+SFT", ...; "Base" also maps to "Instruct"), or None."""
    key = paper_size(size)
    if key is None:
        return None
    if label == "Base":
        label = BASE_LABEL
    return PAPER_TABLES[key].get(label)


def paper_value(size: object, label: str, column: str) -> float | None:
    row = paper_row(size, label)
    col = "Avg" if column == "Avg" else canonical_column(column)
    return None if row is None or col is None else row.get(col)
