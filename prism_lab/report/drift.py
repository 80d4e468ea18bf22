"""The drift picture: every evaluated checkpoint as a point, x = distance from the base checkpoint
(KL from base, per token), y = distance to the supervision (held-out teacher NLL, per token), with
arrows along each cell's chain (base -> +SFT -> PRISM -> RL). The PRISM paper's thesis (section 1)
is that SFT moves away from the base without landing on the supervision; the picture shows where
each stage goes.

Reads the ``drift/*`` metrics the eval runs logged (see ``prism_lab.trainers.drift``); the base
point is (0, the base's own teacher NLL), which every eval run of the chain records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.report.frame import EVAL_ROLES, SweepData
from prism_lab.report.stats import mean_std

#: Ledger metric names written by the eval stage (fractions of nats per token).
KL = "drift/kl_from_base"
NLL = "drift/teacher_nll"
BASE_NLL = "drift/base_teacher_nll"
GAP_CAPTION = "drift/disc_gap_caption"
GAP_COT = "drift/disc_gap_cot"
DRIFT_METRICS = (KL, NLL, BASE_NLL, GAP_CAPTION, GAP_COT)

#: Chain order of the evaluated stages.
CHAIN = ("base", "sft", "align", "rl")


@dataclass
class DriftPoint:
    """One checkpoint of one chain, averaged over the seeds that reached it."""

    chain: str  # e.g. "tiny-s PRISM+GRPO"
    stage: str
    label: str
    alignment: Any
    kl: float | None
    nll: float | None
    gaps: dict[str, float | None]
    n: int


def _chain_name(size: Any, alignment: Any, algorithm: Any) -> str:
    prefix = "SFT" if alignment in (None, "none") else str(alignment).upper()
    return f"{size} {prefix}+{str(algorithm).upper()}"


def drift_chains(data: SweepData) -> dict[str, list[DriftPoint]]:
    """chain -> its points in chain order (base first), from the done eval runs of every cell."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in data.cells:
        ax = cell.axes
        name = _chain_name(ax.get("size"), ax.get("alignment"), ax.get("algorithm"))
        for role, stage in EVAL_ROLES.items():
            key = cell.roles.get(role)
            if key is None or data.run_status(key) != "done":
                continue
            vals = data.last_values(key)
            if vals.get(NLL) is None and vals.get(KL) is None:
                continue
            slot = acc.setdefault((name, stage), {"alignment": ax.get("alignment"), "seeds": {}})
            slot["seeds"][ax.get("seed", 0)] = vals
            if stage != "base" and vals.get(BASE_NLL) is not None:
                base = acc.setdefault((name, "base"), {"alignment": ax.get("alignment"), "seeds": {}})
                base["seeds"].setdefault(ax.get("seed", 0), {KL: 0.0, NLL: vals[BASE_NLL]})
    out: dict[str, list[DriftPoint]] = {}
    for (name, stage), slot in acc.items():
        seeds = list(slot["seeds"].values())

        def avg(metric: str) -> float | None:
            return mean_std([v[metric] for v in seeds if v.get(metric) is not None])[0]

        out.setdefault(name, []).append(DriftPoint(
            chain=name, stage=stage, label=_stage_label(stage, slot["alignment"], name), alignment=slot["alignment"],
            kl=avg(KL), nll=avg(NLL), gaps={"caption": avg(GAP_CAPTION), "cot": avg(GAP_COT)}, n=len(seeds)))
    for pts in out.values():
        pts.sort(key=lambda p: CHAIN.index(p.stage))
    return dict(sorted(out.items()))


def _stage_label(stage: str, alignment: Any, chain: str) -> str:
    if stage == "base":
        return "Instruct"
    if stage == "sft":
        return "+SFT"
    if stage == "align":
        return str(alignment).upper()
    return chain.split(" ", 1)[1]


def drift_rows(chains: dict[str, list[DriftPoint]]) -> list[list[str]]:
    """Markdown rows: checkpoint, KL from base, teacher NLL, caption gap, cot gap, seeds (each checkpoint once)."""
    seen: set[tuple[str, str]] = set()
    rows = []
    for name, pts in chains.items():
        size = name.split(" ", 1)[0]
        for p in pts:
            ident = (size, p.label)
            if ident in seen:
                continue
            seen.add(ident)
            rows.append([f"{size} {p.label}", _f(p.kl), _f(p.nll), _f(p.gaps["caption"]), _f(p.gaps["cot"]), str(p.n)])
    return rows


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def plot_drift(chains: dict[str, list[DriftPoint]], path: Path, *, title: str) -> Path | None:
    """drift.png: one arrowed polyline per chain; None when no checkpoint has both coordinates."""
    from prism_lab.report.plots import _figure

    drawn = {n: [p for p in pts if p.kl is not None and p.nll is not None] for n, pts in chains.items()}
    drawn = {n: pts for n, pts in drawn.items() if pts}
    if not drawn:
        return None
    fig = _figure(7.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    markers = {"base": "*", "sft": "o", "align": "s", "rl": "^"}
    import matplotlib

    colours = matplotlib.colormaps["tab10"]
    for i, (name, pts) in enumerate(drawn.items()):
        colour = colours(i % 10)
        for a, b in zip(pts, pts[1:]):
            ax.annotate("", xy=(b.kl, b.nll), xytext=(a.kl, a.nll),
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.2})
        for p in pts:
            size = 140 if p.stage == "base" else 60
            ax.scatter([p.kl], [p.nll], marker=markers.get(p.stage, "o"), color=colour, s=size,
                       zorder=3, label=name if p is pts[-1] else None)
            ax.annotate(p.label, (p.kl, p.nll), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("distance from base: KL(base || checkpoint) per token, on the base's samples")
    ax.set_ylabel("distance to supervision: held-out teacher NLL per token")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
