"""Markdown rendering of a report: paper-shaped tables per size, deltas, paper side by side, status."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from prism_lab.report import item_bootstrap
from prism_lab.report.drift import drift_rows
from prism_lab.report.frame import SweepData
from prism_lab.report.paper import (
    PAPER_ALIGN_ONLY_DELTAS,
    PAPER_AVG_DELTAS,
    PAPER_COLUMNS,
    paper_row,
    paper_size,
)
from prism_lab.report.stats import method_description
from prism_lab.report.deltas import Delta
from prism_lab.report.tables import (
    AVG,
    BASELINE_LABELS,
    VARIES,
    Baseline,
    Row,
    baseline_avg,
    noise_note,
)

DASH = "–"
SIG_MARK = "*"  # significant over seeds (the grid's method)
ITEM_MARK = "†"  # significant over benchmark items (paired item bootstrap)
NOISE_MARK = "~"  # within noise of (or below) the benchmark's majority-answer baseline


# ---- cell formatting -------------------------------------------------------------------------------
def fmt_mean_std(mean: float | None, std: float | None) -> str:
    """"75.7 ± 0.4"; one seed: "75.7 ± –"; no value: "–"."""
    if mean is None:
        return DASH
    return f"{mean:.1f} ± {DASH if std is None else f'{std:.1f}'}"


def fmt_signed(x: float | None) -> str:
    if x is None:
        return DASH
    text = f"{x:+.1f}"
    return "+0.0" if text == "-0.0" else text


def fmt_delta(mean: float | None, significant: bool | None, item_significant: bool | None = None) -> str:
    """"+4.4*" when significant over seeds, "+4.4†" over items, "+4.4*†" both, "+4.4" otherwise."""
    return fmt_signed(mean) + (SIG_MARK if significant else "") + (ITEM_MARK if item_significant else "")


def fmt_ci(low: float | None, high: float | None) -> str:
    return DASH if low is None else f"[{fmt_signed(low)}, {fmt_signed(high)}]"


def fmt_significant(significant: bool | None, note: str = "") -> str:
    if significant is None:
        return note or "n/a (1 seed)"
    return "yes" if significant else "no"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


# ---- table bodies ----------------------------------------------------------------------------------
def fmt_baseline(value: float | str | None) -> str:
    """A baseline cell: "50.0" (%), "varies" when the sweep's runs disagree, "–" when none was logged."""
    if value is None:
        return DASH
    return value if isinstance(value, str) else f"{value:.1f}"


def _result_cell(row: Row, col: str, baseline: Baseline | None) -> str:
    """"mean ± std", with NOISE_MARK when the mean is within noise of the benchmark's majority baseline."""
    mean, std, _n = row.stat(col)
    mark = NOISE_MARK if baseline is not None and baseline.within_noise(mean) else ""
    return fmt_mean_std(mean, std) + mark


def baseline_rows(baselines: dict[str, Baseline], benchmarks: list[str]) -> list[list[str]]:
    """The `chance` and `majority answer` rows under a results table (none when no benchmark has one)."""
    if not any(b in baselines for b in benchmarks):
        return []
    return [[label, *(fmt_baseline(baselines[b].percent(m) if b in baselines else None) for b in benchmarks),
             fmt_baseline(baseline_avg(baselines, benchmarks, m)), DASH] for m, label in BASELINE_LABELS.items()]


def result_table(rows: list[Row], benchmarks: list[str],
                 baselines: dict[str, Baseline] | None = None) -> tuple[list[str], list[list[str]]]:
    """Rows x (benchmarks, Avg, n), then the baseline rows; cells within noise of the majority answer get
    NOISE_MARK (Avg cells are never marked: the baselines are per benchmark)."""
    baselines = baselines or {}
    headers = ["Method", *benchmarks, AVG, "n"]
    body = []
    for row in rows:
        if row.done:
            cells = [_result_cell(row, col, baselines.get(col)) for col in [*benchmarks, AVG]]
            n = str(row.n_done)
        else:
            cells = [row.status] * (len(benchmarks) + 1)
            n = f"{row.n_done}/{row.n_total} done"
        body.append([row.label, *cells, n])
    return headers, body + baseline_rows(baselines, benchmarks)


def delta_table(deltas: list[Delta], benchmarks: list[str]) -> tuple[list[str], list[list[str]]]:
    headers = ["Size", "Δ", *benchmarks, AVG, "Avg 95% CI", "n", "Avg significant", "Avg 95% CI (items)", "items",
               "Avg significant (items)"]
    body = []
    for d in deltas:
        if not d.done:
            body.append([str(d.size), d.label, *[d.status] * (len(benchmarks) + 1), DASH, DASH, d.status, DASH, DASH,
                         d.status])
            continue
        cells = []
        for col in [*benchmarks, AVG]:
            iv, it = d.intervals[col], d.item_intervals.get(col)
            cells.append(fmt_delta(iv.mean, iv.significant, it.significant if it else None))
        iv, it = d.intervals[AVG], d.item_intervals.get(AVG)
        item_cells = ([fmt_ci(it.low, it.high), str(it.n), fmt_significant(it.significant, it.note)] if it
                      else [DASH, "0", "n/a (no item scores)"])
        body.append([str(d.size), d.label, *cells, fmt_ci(iv.low, iv.high), str(iv.n),
                     fmt_significant(iv.significant, iv.note), *item_cells])
    return headers, body


def paper_columns_of(bench_columns: dict[str, str | None]) -> list[tuple[str, str]]:
    """(our benchmark, paper column) for the grid benchmarks that stand in for a paper column."""
    return [(b, c) for b, c in bench_columns.items() if c in PAPER_COLUMNS]


def paper_table(rows: list[Row], matched: list[tuple[str, str]], size: Any) -> tuple[list[str], list[list[str]]]:
    headers = ["Method"]
    for b, col in matched:
        headers += [f"{col} ours ({b})", f"{col} paper"]
    headers += ["paper Avg (7 benchmarks)"]
    body = []
    for row in rows:
        prow = paper_row(size, row.base_label)
        if prow is None:
            continue
        cells = [row.label]
        for b, col in matched:
            ours = fmt_mean_std(*row.stat(b)[:2]) if row.done else row.status
            cells += [ours, f"{prow[col]:.1f}"]
        cells.append(f"{prow['Avg']:.1f}")
        body.append(cells)
    return headers, body


def paper_delta_table(deltas: list[Delta], matched: list[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    names = ", ".join(col for _b, col in matched)
    headers = ["Size", "Δ", f"ours (mean over {names})", f"paper (mean over {names})", "paper Avg Δ (7 benchmarks)"]
    body = []
    for d in deltas:
        key = paper_size(d.size)
        if key is None:
            continue
        t_row, b_row = paper_row(d.size, d.treatment.base_label), paper_row(d.size, d.baseline.base_label)
        if t_row is None or b_row is None:
            continue
        paper_sub = sum(t_row[c] - b_row[c] for _b, c in matched) / len(matched)
        if d.kind == "align":
            paper_avg = PAPER_ALIGN_ONLY_DELTAS.get(key)
        else:
            paper_avg = PAPER_AVG_DELTAS.get(key, {}).get(str(d.algorithm))
        if paper_avg is None:
            paper_avg = t_row["Avg"] - b_row["Avg"]
        if d.done:
            per_seed = []
            for s in d.seeds:
                vals = [d.treatment.seed_value(s, b) for b, _c in matched]
                base = [d.baseline.seed_value(s, b) for b, _c in matched]
                if all(v is not None for v in vals + base):
                    per_seed.append(sum(v - w for v, w in zip(vals, base)) / len(matched))
            ours = fmt_signed(sum(per_seed) / len(per_seed)) if per_seed else DASH
        else:
            ours = d.status
        body.append([str(d.size), d.label, ours, fmt_signed(paper_sub), fmt_signed(paper_avg)])
    return headers, body


# ---- the document ----------------------------------------------------------------------------------
def render_report(
    data: SweepData,
    report: Any,
    *,
    failed: list[dict[str, Any]],
    counts: dict[str, int],
    files: dict[str, Path],
    out_dir: Path,
) -> str:
    """The report.md text of a computed ``report`` (``prism_lab.report.build.Report``)."""
    rep = data.report_spec
    rows, deltas, bench_columns = report.rows, report.deltas, report.bench_columns
    benchmarks = [b for b in data.benchmarks if b not in report.retention]
    lines: list[str] = [f"# Report: {data.name}", ""]
    if data.description:
        lines += [data.description, ""]
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    grid = _rel(Path(data.grid_path), Path.cwd())  # no clone or home path in a committed report
    lines += [
        f"Generated {now} from the ledger `{data.ledger_path}` (grid `{grid}`); regenerate with "
        f"`prism-lab report {data.name}`. Never edit by hand.",
        "",
        "Axes: " + "; ".join(f"`{k}` = {', '.join(str(v) for v in vals)}" for k, vals in data.axes.items()),
        "",
        "Runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" ({len(data.cells)} cells).",
        "",
        "## Method",
        "",
        "- Accuracy in % (one decimal, as in the paper), **mean ± sample std over seeds** (`± –`: one seed); "
        "`n` = seeds.",
        f"- `{AVG}` = mean over this grid's benchmarks ({', '.join(benchmarks)}) per seed, then mean ± std "
        f"over seeds.",
        "- Rows: `Instruct` = the `base` stage's checkpoint, the chain's starting model (one run per size, "
        "shared by all seeds); `+SFT` = SFT checkpoint; `SFT+X` = SFT → RLVR with algorithm X; `PRISM` = SFT → PRISM "
        "alignment; `PRISM+X` = SFT → PRISM → RLVR. `[axis=value]` marks further (non-core) axes.",
        f"- Deltas: `{rep['treatment']}` − `{rep['baseline']}` of axis `{rep['compare_axis']}`, paired by "
        f"seed, in points.",
        f"- Significance over seeds ({rep['significance']}, mark `{SIG_MARK}`): "
        f"{method_description(rep['significance'])}",
        f"- Significance over items (mark `{ITEM_MARK}`, columns `(items)`): {item_bootstrap.describe()}",
        "- A row or delta whose runs are not all done shows the status (`failed`, `running`, `pending`, "
        "`blocked`) instead of a number; nothing is dropped.",
        *_baseline_method(report),
        "",
    ]
    for size, size_rows in rows.items():
        headers, body = result_table(size_rows, benchmarks, report.baselines)
        lines += [f"## Results: size {size}", "", md_table(headers, body), ""]
        if f"table_{size}" in files:
            lines += [f"CSV: [{files[f'table_{size}'].name}]({_rel(files[f'table_{size}'], out_dir)})", ""]
    lines += ["## Deltas", ""]
    if deltas:
        headers, body = delta_table(deltas, benchmarks)
        lines += [md_table(headers, body), "",
                  f"`{SIG_MARK}` = significant over seeds ({rep['significance']}, 95%); `{ITEM_MARK}` = significant "
                  f"over benchmark items (paired item bootstrap, 95%). CSV with every interval: "
                  f"[deltas.csv]({_rel(files['deltas'], out_dir)})" if "deltas" in files else "", ""]
    else:
        lines += [f"No pair of rows differs only in `{rep['compare_axis']}` "
                  f"({rep['baseline']} vs {rep['treatment']}).", ""]
    lines += _retention_section(report, files, out_dir)
    lines += _drift_section(report)
    lines += _paper_section(rows, deltas, bench_columns)
    plots = [(k, p) for k, p in files.items() if k.startswith("plot_")]
    if plots:
        lines += ["## Plots", ""]
        for key, path in plots:
            title = key.removeprefix("plot_").replace("_", " ")
            lines += [f"### {title}", "", f"![{title}]({_rel(path, out_dir)})", ""]
    lines += ["## Failed runs", ""]
    if failed:
        lines += [md_table(["run", "kind", "key", "attempts", "error", "log"],
                           [[f["label"], f["kind"], f["key"][:12], f["attempts"], _summary_line(f["error"]),
                             f"`{f['log_path']}`" if f["log_path"] else DASH] for f in failed]), ""]
    else:
        lines += ["None.", ""]
    lines += ["## Files", ""]
    for key, path in files.items():
        if not key.startswith("plot_"):
            lines.append(f"- [{path.name}]({_rel(path, out_dir)})")
    lines.append("")
    return "\n".join(lines)


def _paper_section(rows: dict[Any, list[Row]], deltas: list[Delta],
                   bench_columns: dict[str, str | None]) -> list[str]:
    """The "Paper side by side" section: the paper's numbers beside ours for the paper's own benchmarks that
    this grid evaluates, or why there are none."""
    lines: list[str] = ["## Paper side by side", ""]
    matched = paper_columns_of(bench_columns)
    paper_sizes = [s for s in rows if paper_size(s) is not None]
    if not matched:
        lines += ["This grid has none of the paper's benchmarks (MathVista, MathVerse, MathVision, WeMath, MMMU, "
                  "MMMU-Pro, HallusionBench, as official VLMEvalKit files), so the paper's numbers are not set "
                  "beside ours: a synthetic stand-in measures something else.", ""]
    elif not paper_sizes:
        lines += ["The paper reports Qwen3-VL 4B and 8B only; this grid's sizes "
                  f"({', '.join(str(s) for s in rows)}) have no paper row to compare with.", ""]
    if matched and paper_sizes:
        lines += ["The paper's numbers (Qwen3-VL, from the PRISM project page; docs/prism_method.md §9) next to "
                  "ours, only for the paper's own benchmarks that this grid evaluates.", ""]
        for size in paper_sizes:
            headers, body = paper_table(rows[size], matched, size)
            if body:
                lines += [f"### Size {size}", "", md_table(headers, body), ""]
        headers, body = paper_delta_table([d for d in deltas if d.size in paper_sizes], matched)
        if body:
            lines += ["### Deltas vs the paper's", "", md_table(headers, body), ""]
    return lines


def _baseline_method(report: Any) -> list[str]:
    """Method bullets on the baseline rows and NOISE_MARK (none when no benchmark has a baseline)."""
    if not report.baselines and not report.retention_baselines:
        return []
    return [
        (f"- Baselines (rows `{BASELINE_LABELS['chance']}`, `{BASELINE_LABELS['majority']}`, in %, computed on "
         "the items evaluated): `chance` = expected accuracy of a uniform random guess (1/options for a "
         "multiple-choice item, 1/2 for Yes/No, 1/(distinct answers of its category) for an open item); "
         "`majority answer` = accuracy of answering every item with its category's most frequent answer. "
         f"They are properties of the benchmark file, the same for every run; `{VARIES}` = the sweep's eval runs "
         "logged different values (a different file or limit). Their `Avg` is the mean over the benchmarks."),
        (f"- `{NOISE_MARK}` after a result: its mean is within noise of the majority-answer baseline, i.e. "
         f"{noise_note()}: a model that answers by question type alone could score it. `{AVG}` cells are not "
         "marked."),
    ]


def _retention_section(report: Any, files: dict[str, Path], out_dir: Path) -> list[str]:
    """Text retention: the lm-eval benchmarks, same rows and deltas, their own Avg (not in the paper's)."""
    if not report.retention:
        return []
    lines = ["## Text retention", "",
             "Text-only tasks run through lm-eval on each checkpoint (no image): how much of the language model's "
             f"capability each stage keeps. `{AVG}` here is over {', '.join(report.retention)} only; the results "
             "tables above exclude them.", ""]
    for size, size_rows in report.retention_rows.items():
        headers, body = result_table(size_rows, report.retention, report.retention_baselines)
        lines += [f"### Retention: size {size}", "", md_table(headers, body), ""]
    if report.retention_deltas:
        headers, body = delta_table(report.retention_deltas, report.retention)
        lines += ["### Retention deltas", "", md_table(headers, body), ""]
    return lines


def _drift_section(report: Any) -> list[str]:
    """Drift: distance from the base and to the supervision of every checkpoint (see report/drift.py)."""
    rows = drift_rows(report.drift)
    lines = ["## Drift", ""]
    if not rows:
        return lines + ["No eval run logged drift measurements (they need held-out teacher rows: the synthetic "
                        "data's sft_heldout.json, or `data.local.heldout`).", ""]
    lines += ["Per checkpoint, mean over seeds, on held-out teacher rows: `KL from base` = KL(base ‖ checkpoint) per "
              "token on the base checkpoint's own samples (distance from the original capabilities); `teacher NLL` = "
              "per-token NLL of the teacher's responses (distance to the supervision); `disc gap` = the chain's "
              "discriminator's mean score margin teacher − checkpoint (caption, cot), where a discriminator exists. "
              "The picture (plots/drift.png) draws each cell's chain as arrows.", "",
              md_table(["Checkpoint", "KL from base", "teacher NLL", "disc gap caption", "disc gap cot", "n"], rows),
              ""]
    return lines


def _summary_line(text: str, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[-1] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()
