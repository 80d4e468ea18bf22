"""PNG plots (matplotlib, Agg canvas; pyplot's global state is never touched).

* training curves: one PNG per stage kind, one subplot per metric, one line per run (x = step);
* delta chart: grouped bars of the Avg delta (treatment − baseline) per algorithm and size, with
  error bars (sample std of the per-seed deltas) when there are at least 2 seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

from prism_lab.report.deltas import Delta
from prism_lab.report.frame import SweepData
from prism_lab.report.tables import AVG

#: Metrics drawn per stage kind, in this order; other metrics a run logged follow (up to MAX_PANELS).
CURVE_METRICS: dict[str, tuple[str, ...]] = {
    "sft": ("loss", "lr"),
    "disc_warmup": ("warmup/acc", "warmup/heldout_acc", "warmup/loss"),
    "align": ("d_acc", "gap/caption", "gap/cot", "cap_acc", "cot_acc", "format_rate", "response_length"),
    "rl": ("reward/mean", "acc/mean", "format/mean", "response_length/mean"),
}
CURVE_TITLES = {
    "sft": "SFT", "disc_warmup": "Discriminator warm-up", "align": "PRISM alignment (teacher − student gaps)",
    "rl": "RLVR",
}
MAX_PANELS = 9


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _run_label(data: SweepData, key: str) -> str:
    run = data.runs[key]
    status = data.run_status(key)
    label = run.label or key[:12]
    return label if status == "done" else f"{label} ({status})"


def plot_curves(data: SweepData, out_dir: Path) -> list[Path]:
    """curves_<kind>.png for every stage kind that logged metrics; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_kind: dict[str, list[str]] = {}
    used = {k for c in data.cells for k in c.roles.values()}
    for key in sorted(used, key=lambda k: (data.runs[k].label if k in data.runs else k)):
        run = data.runs.get(key)
        if run is None or run.kind == "eval" or not data.metrics.get(key):
            continue
        by_kind.setdefault(run.kind, []).append(key)
    written = []
    for kind in [*CURVE_METRICS, *sorted(k for k in by_kind if k not in CURVE_METRICS)]:
        keys = by_kind.get(kind)
        if not keys:
            continue
        seen: list[str] = []
        for key in keys:
            for _step, name, value in data.metrics[key]:
                if name not in seen and value is not None:
                    seen.append(name)
        preferred = [m for m in CURVE_METRICS.get(kind, ()) if m in seen]
        metrics = (preferred + [m for m in seen if m not in preferred])[:MAX_PANELS]
        if not metrics:
            continue
        ncols = min(3, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        legend_h = 0.13 * math.ceil(min(len(keys), 30) / 3) + 0.3
        height = 3.4 * nrows + 0.6 + legend_h
        fig = _figure(5.0 * ncols, height)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, metric in enumerate(metrics):
            ax = axes[i // ncols][i % ncols]
            for j, key in enumerate(keys):
                pts = [(s, v) for s, n, v in data.metrics[key] if n == metric and v is not None]
                if pts:
                    pts.sort(key=lambda p: p[0])
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1.0,
                            color=_color(j), label=_run_label(data, key))
            ax.set_title(metric, fontsize=10)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for i in range(len(metrics), nrows * ncols):
            axes[i // ncols][i % ncols].set_visible(False)
        handles, labels = axes[0][0].get_legend_handles_labels()
        for row in axes:
            for ax in row:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    if lab not in labels:
                        handles.append(h)
                        labels.append(lab)
        if handles:
            fig.legend(handles[:30], labels[:30], loc="lower center", fontsize=6, ncol=3, frameon=False)
        fig.suptitle(f"{data.name}: {CURVE_TITLES.get(kind, kind)} ({len(keys)} runs)", fontsize=11)
        fig.tight_layout(rect=(0, min(0.6, legend_h / height), 1, 1 - 0.5 / height))
        path = out_dir / f"curves_{kind.replace('/', '_')}.png"
        fig.savefig(path)
        written.append(path)
    return written


def _color(i: int):
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


def plot_deltas(deltas: list[Delta], path: Path, *, title: str = "") -> Path | None:
    """Grouped bars of the Avg delta: groups = algorithm (+ extra axes), bars = size. Deltas that are not
    done are marked with their status at 0. None when there is no delta at all."""
    if not deltas:
        return None
    groups: list[str] = []
    sizes: list[str] = []
    for d in deltas:
        g = _group_label(d)
        if g not in groups:
            groups.append(g)
        if str(d.size) not in sizes:
            sizes.append(str(d.size))
    width = 0.8 / max(1, len(sizes))
    fig = _figure(max(6.0, 1.2 * len(groups) * max(1, len(sizes)) + 2), 4.2)
    ax = fig.subplots()
    for si, size in enumerate(sizes):
        xs, ys, errs, pending = [], [], [], []
        for gi, g in enumerate(groups):
            match = [d for d in deltas if str(d.size) == size and _group_label(d) == g]
            if not match:
                continue
            x = gi - 0.4 + width * (si + 0.5)
            iv = match[0].intervals.get(AVG)
            if not match[0].done or iv is None or iv.mean is None:
                pending.append((x, match[0].status if not match[0].done else "no value"))
                continue
            xs.append(x)
            ys.append(iv.mean)
            errs.append(iv.std if iv.n >= 2 and iv.std is not None else 0.0)
        ax.bar(xs, ys, width=width * 0.95, color=_color(2 * si), label=f"size {size}",
               yerr=errs if any(errs) else None, capsize=3)
        for x, y, e in zip(xs, ys, errs):
            ax.annotate(f"{y:+.1f}", (x, y + (e if y >= 0 else -e)), xytext=(0, 3 if y >= 0 else -3),
                        textcoords="offset points", ha="center", va="bottom" if y >= 0 else "top", fontsize=7)
        for x, status in pending:
            ax.annotate(status, (x, 0.0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, rotation=90, color=_color(2 * si))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel("Δ Avg accuracy (points)")
    ax.set_title(title or "Avg delta (treatment − baseline); error bars: std over seeds", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _group_label(d: Delta) -> str:
    if d.kind == "align":
        return f"{d.treatment.base_label} (no RL)"
    base = str(d.algorithm).upper() if d.algorithm is not None else d.treatment.base_label
    if d.treatment.extras:
        base += "\n" + ", ".join(f"{k}={v}" for k, v in d.treatment.extras)
    return base
