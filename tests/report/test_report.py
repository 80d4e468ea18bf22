"""Reports from the ledger alone: every number of the Markdown and CSV tables against hand-computed values,
significance marks, failed/running cells shown as such, results.csv shape, plots; stats functions."""

from __future__ import annotations

import itertools
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from prism_lab.harness.grid import GridSpec
from prism_lab.harness.ledger import Ledger
from prism_lab.report import build_report
from prism_lab.report.paper import (
    PAPER_AVG_DELTAS,
    PAPER_COLUMNS,
    PAPER_TABLES,
    paper_value,
)
from prism_lab.report.stats import (
    mean_std,
    paired_bootstrap_interval,
    paired_interval,
    paired_t_interval,
    t_cdf,
    t_quantile,
)

BENCHES = ["synth-perception", "synth-reasoning", "synth-hallusion"]
#: Per seed offsets of each benchmark from the row's per-seed Avg (they sum to 0, so Avg = the row value).
OFFSETS = {0: {"synth-perception": 2.0, "synth-reasoning": -3.0, "synth-hallusion": 1.0},
           1: {"synth-perception": 2.4, "synth-reasoning": -3.4, "synth-hallusion": 1.0}}
#: size -> row -> (seed 0 Avg, seed 1 Avg) in %; None = not done (8b PRISM+DAPO seed 1 runs, +GSPO seed 1 failed).
AVGS = {
    "4b": {"+SFT": (56.6, 57.0), "SFT+GRPO": (61.6, 62.0), "SFT+DAPO": (63.0, 63.4), "SFT+GSPO": (61.2, 62.0),
           "PRISM": (57.1, 57.3), "PRISM+GRPO": (66.6, 67.2), "PRISM+DAPO": (64.0, 63.0), "PRISM+GSPO": (65.6, 66.0)},
    "8b": {"+SFT": (58.0, 58.2), "SFT+GRPO": (63.0, 63.6), "SFT+DAPO": (65.0, 65.4), "SFT+GSPO": (63.2, 63.4),
           "PRISM": (59.1, 59.5), "PRISM+GRPO": (69.1, 69.5), "PRISM+DAPO": (68.9, None), "PRISM+GSPO": (68.7, None)},
}
ROW_ORDER = ["+SFT", "SFT+GRPO", "SFT+DAPO", "SFT+GSPO", "PRISM", "PRISM+GRPO", "PRISM+DAPO", "PRISM+GSPO"]


# ---- a ledger with known numbers -------------------------------------------------------------------
def make_plan(spec: GridSpec, path: Path):
    """A plan shaped like PrismPipeline's (shared sft/align runs, eval roles) without importing stages."""
    names = list(spec.axes)
    runs: dict[str, SimpleNamespace] = {}
    cells = []

    def add(kind: str, key: str, label: str, inputs: dict) -> str:
        runs.setdefault(key, SimpleNamespace(key=key, kind=kind, label=label, config={"k": key}, inputs=inputs))
        return key

    for values in itertools.product(*(spec.axes[n] for n in names)):
        ax = dict(zip(names, values))
        size, seed, al, alg = ax["size"], ax["seed"], ax["alignment"], ax["algorithm"]
        align_extra = "".join(f"-{k}={v}" for k, v in ax.items() if k.startswith("align."))
        roles = {"data": add("data", "data", "data", {})}
        sft = roles["sft"] = add("sft", f"sft-{size}-s{seed}", f"sft size={size} seed={seed}", {"data": "data"})
        roles["eval/sft"] = add("eval", f"ev-{sft}", f"eval:sft size={size} seed={seed}", {"checkpoint": sft})
        policy = sft
        if al != "none":
            dw = roles["disc_warmup"] = add("disc_warmup", f"dw-{size}-s{seed}", f"disc_warmup size={size} seed={seed}",
                                            {"policy": sft})
            policy = roles["align"] = add("align", f"al-{size}-s{seed}-{al}{align_extra}",
                                          f"align size={size} seed={seed}{align_extra}", {"policy": sft, "discriminator": dw})
            roles["eval/align"] = add("eval", f"ev-{policy}", f"eval:align {policy}", {"checkpoint": policy})
        rl = roles["rl"] = add("rl", f"rl-{policy}-{alg}", f"rl {policy} algorithm={alg}", {"policy": policy})
        roles["eval/rl"] = add("eval", f"ev-{rl}", f"eval:rl {rl}", {"checkpoint": rl})
        cells.append(SimpleNamespace(id=f"c{len(cells):02d}", axes=ax, runs=roles))
    grid = SimpleNamespace(name=spec.name, path=path, spec=spec)
    return SimpleNamespace(grid=grid, cells=cells, runs=runs)


def spec_for(name="rep", significance="paired_t", benchmarks=BENCHES, **axes_over):
    axes = {"size": ["4b", "8b"], "algorithm": ["grpo", "dapo", "gspo"], "alignment": ["none", "prism"],
            "seed": [0, 1], **axes_over}
    return GridSpec(name=name, axes=axes, models={"4b": "tiny-s", "8b": "tiny-m"}, benchmarks=benchmarks,
                    stages={"sft": {}, "disc_warmup": {}, "align": {}, "rl": {}, "eval": {}},
                    report={"significance": significance})


def row_of(role: str, axes: dict) -> str:
    if role == "eval/sft":
        return "+SFT"
    if role == "eval/align":
        return "PRISM"
    prefix = "SFT" if axes["alignment"] == "none" else "PRISM"
    return f"{prefix}+{axes['algorithm'].upper()}"


def log_eval(ledger: Ledger, key: str, avg: float, seed: int) -> None:
    values = {}
    for b in BENCHES:
        values[f"eval/{b}/accuracy"] = (avg + OFFSETS[seed][b]) / 100.0
        values[f"eval/{b}/format_rate"] = 0.9
        values[f"eval/{b}/n"] = 100
    values["eval/avg/accuracy"] = avg / 100.0
    ledger.log_metrics(key, 0, values)


def log_curves(ledger: Ledger, key: str, kind: str) -> None:
    names = {"sft": ["loss", "lr"], "disc_warmup": ["warmup/acc", "warmup/heldout_acc", "warmup/loss"],
             "align": ["d_acc", "cap_acc", "cot_acc", "format_rate", "gap/caption", "gap/cot", "response_length"],
             "rl": ["reward/mean", "acc/mean", "format/mean", "response_length/mean"]}[kind]
    for step in range(5):
        ledger.log_metrics(key, step, {n: 0.1 * step + 0.01 * i for i, n in enumerate(names)})


@pytest.fixture
def ledger_root(tmp_path):
    root = tmp_path / "root"
    ledger = Ledger(root)
    plan = make_plan(spec_for(), tmp_path / "rep.yaml")
    ledger.record_plan(plan)
    failed_rl = running_eval = None
    for cell in plan.cells:
        ax = cell.axes
        if ax["size"] == "8b" and ax["alignment"] == "prism" and ax["seed"] == 1:
            if ax["algorithm"] == "gspo":
                failed_rl = cell.runs["rl"]
            if ax["algorithm"] == "dapo":
                running_eval = cell.runs["eval/rl"]
    done = set()
    for cell in plan.cells:
        for role, key in cell.runs.items():
            if key in done or key in (failed_rl, running_eval) or (role == "eval/rl" and cell.runs["rl"] == failed_rl):
                continue
            done.add(key)
            kind = plan.runs[key].kind
            if role.startswith("eval/"):
                avg = AVGS[cell.axes["size"]][row_of(role, cell.axes)][cell.axes["seed"]]
                log_eval(ledger, key, avg, cell.axes["seed"])
            elif kind != "data":
                log_curves(ledger, key, kind)
            ledger.mark_done(key, str(tmp_path / "art" / key))
    assert ledger.claim(failed_rl, owner_pid=1)
    log_curves(ledger, failed_rl, "rl")
    ledger.set_process(failed_rl, pid=1234, log_path="/logs/rl-failed.log")
    ledger.set_status(failed_rl, "failed", error="Traceback (most recent call last):\nRuntimeError: CUDA out of memory")
    assert ledger.claim(running_eval, owner_pid=1)
    ledger.close()
    return root


# ---- helpers ---------------------------------------------------------------------------------------
def md_section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    nxt = [i for i in (rest.find("\n## "), rest.find("\n### ")) if i >= 0]
    return rest[: min(nxt)] if nxt else rest


def md_rows(section: str) -> list[dict[str, str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(headers, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def fmt(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def bench_values(size: str, row: str, col: str) -> list[float]:
    out = []
    for seed, avg in enumerate(AVGS[size][row]):
        if avg is not None:
            out.append(avg if col == "Avg" else avg + OFFSETS[seed][col])
    return out


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


# ---- stats -----------------------------------------------------------------------------------------
def test_t_quantile_matches_tables():
    for df, expected in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(0.995, 1) == pytest.approx(63.657, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=1e-3)
    assert t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)
    assert t_quantile(0.025, 3) == pytest.approx(-3.182, abs=5e-4)
    assert t_quantile(0.5, 4) == 0.0
    assert t_cdf(0.0, 3) == 0.5
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(-2.0, 10) == pytest.approx(1 - t_cdf(2.0, 10))


def test_mean_std_and_intervals():
    assert mean_std([]) == (None, None, 0)
    assert mean_std([3.0]) == (3.0, None, 1)
    m, s, n = mean_std([1.0, 2.0, 4.0])
    assert (m, n) == (pytest.approx(7 / 3), 3) and s == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    # t-interval by hand: d = 5.0, 5.2 -> mean 5.1, sd 0.1414, se 0.1, half = 12.706 * 0.1
    iv = paired_t_interval([5.0, 5.2])
    assert iv.mean == pytest.approx(5.1) and iv.std == pytest.approx(math.sqrt(0.02))
    assert iv.low == pytest.approx(5.1 - 1.2706, abs=1e-3) and iv.high == pytest.approx(5.1 + 1.2706, abs=1e-3)
    assert iv.significant is True
    iv = paired_t_interval([1.0, -0.4])
    assert iv.significant is False and iv.low < 0 < iv.high
    # three seeds: d = 1, 2, 3 -> mean 2, sd 1, half = 4.303 / sqrt(3)
    iv = paired_interval([1.0, 2.0, 3.0], "paired_t")
    assert (iv.low, iv.high) == (pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3), pytest.approx(2 + 4.303 / math.sqrt(3), abs=1e-3))
    one = paired_t_interval([2.0])
    assert one.significant is None and one.note == "n/a (1 seed)" and one.mean == 2.0
    assert paired_bootstrap_interval([2.0]).note == "n/a (1 seed)"
    # bootstrap with 2 pairs: resampled means are d1, (d1+d2)/2, d2 -> percentile interval [min, max]
    b = paired_bootstrap_interval([0.5, 0.3])
    assert (b.low, b.high, b.significant) == (pytest.approx(0.3), pytest.approx(0.5), True)
    assert paired_bootstrap_interval([1.0, -0.4]).significant is False
    # fixed seed: identical on every call
    many = [0.3, -0.1, 0.8, 0.2, 0.5]
    assert paired_bootstrap_interval(many) == paired_bootstrap_interval(many)
    with pytest.raises(ValueError):
        paired_interval([1.0, 2.0], "anova")


def test_paper_tables_are_consistent():
    for size, table in PAPER_TABLES.items():
        for label, row in table.items():
            avg = sum(row[c] for c in PAPER_COLUMNS) / len(PAPER_COLUMNS)
            assert abs(avg - row["Avg"]) <= 0.05, (size, label)
        for alg, delta in PAPER_AVG_DELTAS[size].items():
            got = table[f"PRISM+{alg.upper()}"]["Avg"] - table[f"SFT+{alg.upper()}"]["Avg"]
            assert got == pytest.approx(delta, abs=1e-9)
    assert paper_value("4b", "Base", "HalluBench") == 68.2
    assert paper_value("8B", "PRISM+GRPO", "hallusionbench") == 77.2
    assert paper_value("2b", "PRISM", "MMMU") is None


# ---- the report ------------------------------------------------------------------------------------
def test_report_tables_every_number(ledger_root, tmp_path):
    out = tmp_path / "out"
    paths = build_report(ledger_root, "rep", out)
    text = paths.markdown.read_text()
    assert "paired t-interval" in text and "95%" in text  # the method is stated
    assert "`Instruct` = the `base` stage's checkpoint" in text
    # runs that logged no baselines: no baseline rows, no marks, no words about them
    assert "majority answer" not in text and "~" not in text and "varies" not in text

    for size in ("4b", "8b"):
        rows = md_rows(md_section(text, f"## Results: size {size}"))
        assert [r["Method"] for r in rows] == ROW_ORDER
        wide = pd.read_csv(paths.tables[size])
        assert list(wide["method"]) == ROW_ORDER
        for r, (_, w) in zip(rows, wide.iterrows()):
            label = r["Method"]
            vals = AVGS[size][label]
            if None in vals:
                continue
            assert r["n"] == "2" and w["n_done"] == 2 and w["status"] == "done"
            for col in [*BENCHES, "Avg"]:
                xs = bench_values(size, label, col)
                assert r[col] == fmt(statistics.mean(xs), statistics.stdev(xs)), (size, label, col)
                assert w[col] == pytest.approx(statistics.mean(xs), abs=1e-6)
                assert w[f"{col}_std"] == pytest.approx(statistics.stdev(xs), abs=1e-6)
        # Avg is the mean of the benchmark columns of each seed
        for r in rows:
            if r["Method"] in ("PRISM+DAPO", "PRISM+GSPO") and size == "8b":
                continue
            bench_means = [float(r[b].split(" ± ")[0]) for b in BENCHES]
            assert float(r["Avg"].split(" ± ")[0]) == pytest.approx(statistics.mean(bench_means), abs=0.06)

    # a few literal hand-computed cells
    rows4 = {r["Method"]: r for r in md_rows(md_section(text, "## Results: size 4b"))}
    assert rows4["SFT+GRPO"]["Avg"] == "61.8 ± 0.3"          # 61.6, 62.0
    assert rows4["SFT+GRPO"]["synth-perception"] == "64.0 ± 0.6"  # 63.6, 64.4
    assert rows4["SFT+GRPO"]["synth-reasoning"] == "58.6 ± 0.0"   # 58.6, 58.6
    assert rows4["PRISM+DAPO"]["Avg"] == "63.5 ± 0.7"        # 64.0, 63.0
    # not-done rows show their status, never a number; and are not dropped
    rows8 = {r["Method"]: r for r in md_rows(md_section(text, "## Results: size 8b"))}
    assert all(rows8["PRISM+GSPO"][c] == "failed" for c in [*BENCHES, "Avg"])
    assert rows8["PRISM+GSPO"]["n"] == "1/2 done"
    assert all(rows8["PRISM+DAPO"][c] == "running" for c in [*BENCHES, "Avg"])
    wide8 = pd.read_csv(paths.tables["8b"]).set_index("method")
    assert wide8.loc["PRISM+GSPO", "status"] == "failed" and math.isnan(wide8.loc["PRISM+GSPO", "Avg"])
    assert wide8.loc["PRISM+DAPO", "status"] == "running" and wide8.loc["PRISM+DAPO", "n_done"] == 1

    # ---- deltas (hand-computed: pairs by seed, t quantile 12.706 for 2 seeds) -------------------------
    drows = md_rows(md_section(text, "## Deltas"))
    got = {(r["Size"], r["Δ"]): r for r in drows}
    expected_order = [("4b", f"PRISM+{a} − SFT+{a}") for a in ("GRPO", "DAPO", "GSPO")] + [("4b", "PRISM − +SFT")] + \
                     [("8b", f"PRISM+{a} − SFT+{a}") for a in ("GRPO", "DAPO", "GSPO")] + [("8b", "PRISM − +SFT")]
    assert [(r["Size"], r["Δ"]) for r in drows] == expected_order
    hand = {  # (size, comparison) -> (per-seed Avg diffs, mean text, CI text, significant)
        ("4b", "PRISM+GRPO − SFT+GRPO"): ([5.0, 5.2], "+5.1", "[+3.8, +6.4]", "yes"),
        ("4b", "PRISM+DAPO − SFT+DAPO"): ([1.0, -0.4], "+0.3", "[-8.6, +9.2]", "no"),
        ("4b", "PRISM+GSPO − SFT+GSPO"): ([4.4, 4.0], "+4.2", "[+1.7, +6.7]", "yes"),
        ("4b", "PRISM − +SFT"): ([0.5, 0.3], "+0.4", "[-0.9, +1.7]", "no"),
        ("8b", "PRISM+GRPO − SFT+GRPO"): ([6.1, 5.9], "+6.0", "[+4.7, +7.3]", "yes"),
        ("8b", "PRISM − +SFT"): ([1.1, 1.3], "+1.2", "[-0.1, +2.5]", "no"),
    }
    deltas = pd.read_csv(paths.deltas_csv)
    for (size, comp), (diffs, mean_text, ci_text, sig) in hand.items():
        r = got[(size, comp)]
        mark = "*" if sig == "yes" else ""
        assert r["Avg"] == mean_text + mark
        assert r["Avg 95% CI"] == ci_text and r["Avg significant"] == sig and r["n"] == "2"
        # per benchmark: the offsets cancel in the pair, so every benchmark delta equals the Avg delta
        for b in BENCHES:
            assert r[b] == mean_text + mark
        m, s = statistics.mean(diffs), statistics.stdev(diffs)
        half = 12.706 * s / math.sqrt(2)
        d = deltas[(deltas["size"] == size) & (deltas["comparison"] == comp)].set_index("benchmark")
        assert list(d.index) == [*BENCHES, "Avg"]
        for col in [*BENCHES, "Avg"]:
            assert d.loc[col, "mean"] == pytest.approx(m, abs=1e-6) and d.loc[col, "std"] == pytest.approx(s, abs=1e-6)
            assert d.loc[col, "ci_low"] == pytest.approx(m - half, abs=1e-3)
            assert d.loc[col, "ci_high"] == pytest.approx(m + half, abs=1e-3)
            assert bool(d.loc[col, "significant"]) == (sig == "yes") and d.loc[col, "n_pairs"] == 2
            assert d.loc[col, "status"] == "done" and d.loc[col, "method"] == "paired_t"
    assert got[("8b", "PRISM+DAPO − SFT+DAPO")]["Avg"] == "running"
    assert got[("8b", "PRISM+GSPO − SFT+GSPO")]["Avg"] == "failed"
    assert got[("8b", "PRISM+GSPO − SFT+GSPO")]["Avg significant"] == "failed"
    assert set(deltas[deltas["comparison"] == "PRISM+GSPO − SFT+GSPO"].query("size == '8b'")["status"]) == {"failed"}

    # ---- failed runs are listed with error and log --------------------------------------------------
    failed = md_rows(md_section(text, "## Failed runs"))
    assert len(failed) == 1
    assert failed[0]["kind"] == "rl" and "CUDA out of memory" in failed[0]["error"]
    assert failed[0]["log"] == "`/logs/rl-failed.log`"

    # ---- no paper side by side: synth-hallusion is a stand-in, not the paper's HallusionBench --------
    side = md_section(text, "## Paper side by side")
    assert "none of the paper's benchmarks" in side and "|" not in side
    assert "72.0" not in text  # the paper's SFT+GRPO HalluBench number is nowhere

    # ---- results.csv: one row per eval run x benchmark x metric, never dropping unfinished runs ------
    res = pd.read_csv(paths.results_csv)
    assert list(res.columns) == ["sweep", "cell_id", "size", "algorithm", "alignment", "seed", "role", "run_key",
                                 "status", "benchmark", "metric", "value"]
    # 4 sft evals + 4 align evals + 24 rl evals = 32; 30 done x (3 benchmarks x 3 metrics + avg) + 2 unfinished
    assert len(res) == 30 * 10 + 2
    assert res["run_key"].nunique() == 32
    unfinished = res[res["benchmark"].isna()]
    assert sorted(unfinished["status"]) == ["pending", "running"]
    sft = res[(res["role"] == "eval/sft") & (res["size"] == "4b") & (res["seed"] == 1)]
    assert sft["alignment"].isna().all() and sft["algorithm"].isna().all()  # shared by 6 cells
    assert len(sft.iloc[0]["cell_id"].split(";")) == 6
    acc = sft[(sft["benchmark"] == "synth-perception") & (sft["metric"] == "accuracy")]["value"]
    assert acc.tolist() == [pytest.approx((57.0 + 2.4) / 100)]

    # ---- plots -----------------------------------------------------------------------------------------
    names = sorted(p.name for p in paths.plots)
    assert names == ["curves_align.png", "curves_disc_warmup.png", "curves_rl.png", "curves_sft.png", "delta_avg.png"]
    for p in paths.plots:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{p.name}" in text
    curves = pd.read_csv(paths.curves_csv)
    assert set(curves["kind"]) == {"sft", "disc_warmup", "align", "rl"}


def test_report_bootstrap_and_grid_path(ledger_root, tmp_path, monkeypatch):
    # re-plan the same sweep with bootstrap significance; the report is found through the grid path
    monkeypatch.chdir(tmp_path)  # the header names the grid relative to the working directory (no clone path)
    ledger = Ledger(ledger_root)
    grid_file = tmp_path / "rep.yaml"
    grid_file.write_text("name: rep\n")
    ledger.record_plan(make_plan(spec_for(significance="bootstrap"), grid_file))
    ledger.close()
    paths = build_report(ledger_root, grid_file, tmp_path / "boot")
    text = paths.markdown.read_text()
    assert "paired bootstrap" in text and "10,000 resamples" in text
    assert "(grid `rep.yaml`)" in text
    got = {(r["Size"], r["Δ"]): r for r in md_rows(md_section(text, "## Deltas"))}
    # two pairs: the percentile interval is [min diff, max diff]
    assert got[("4b", "PRISM+GRPO − SFT+GRPO")]["Avg 95% CI"] == "[+5.0, +5.2]"
    assert got[("4b", "PRISM+GRPO − SFT+GRPO")]["Avg significant"] == "yes"
    assert got[("4b", "PRISM+DAPO − SFT+DAPO")]["Avg 95% CI"] == "[-0.4, +1.0]"
    assert got[("4b", "PRISM+DAPO − SFT+DAPO")]["Avg significant"] == "no"
    assert got[("4b", "PRISM − +SFT")]["Avg significant"] == "yes"  # 0.5, 0.3: same sign (t: not significant)
    assert got[("4b", "PRISM − +SFT")]["Avg"] == "+0.4*"
    assert set(pd.read_csv(paths.deltas_csv)["method"]) == {"bootstrap"}


def test_extra_axis_splits_rows_and_one_seed(tmp_path):
    root = tmp_path / "root"
    ledger = Ledger(root)
    spec = spec_for(name="cw", size=["4b"], algorithm=["grpo"], seed=[0], **{"align.caption_weight": [0.5, 1.0]})
    plan = make_plan(spec, tmp_path / "cw.yaml")
    ledger.record_plan(plan)
    avg = {"+SFT": 50.0, "SFT+GRPO": 55.0, "PRISM": 52.0, "PRISM+GRPO": 60.0}
    for cell in plan.cells:
        for role, key in cell.runs.items():
            if ledger.get_run(key).status == "done":
                continue
            if role.startswith("eval/"):
                bump = 2.0 * (cell.axes["align.caption_weight"] == 1.0) if role != "eval/sft" and cell.axes["alignment"] != "none" else 0.0
                log_eval(ledger, key, avg[row_of(role, cell.axes)] + bump, 0)
            ledger.mark_done(key, "x")
    ledger.close()
    paths = build_report(root, "cw", tmp_path / "out")
    text = paths.markdown.read_text()
    rows = md_rows(md_section(text, "## Results: size 4b"))
    assert [r["Method"] for r in rows] == [
        "+SFT", "SFT+GRPO", "PRISM [align.caption_weight=0.5]", "PRISM [align.caption_weight=1.0]",
        "PRISM+GRPO [align.caption_weight=0.5]", "PRISM+GRPO [align.caption_weight=1.0]"]
    assert rows[1]["Avg"] == "55.0 ± –" and rows[1]["n"] == "1"
    assert rows[5]["Avg"] == "62.0 ± –"
    got = {r["Δ"]: r for r in md_rows(md_section(text, "## Deltas"))}
    r = got["PRISM+GRPO [align.caption_weight=1.0] − SFT+GRPO"]
    assert r["Avg"] == "+7.0" and r["Avg significant"] == "n/a (1 seed)" and r["Avg 95% CI"] == "–"
    assert got["PRISM+GRPO [align.caption_weight=0.5] − SFT+GRPO"]["Avg"] == "+5.0"
    assert got["PRISM [align.caption_weight=0.5] − +SFT"]["Avg"] == "+2.0"
    wide = pd.read_csv(paths.tables["4b"])
    assert "align.caption_weight" in wide.columns and math.isnan(wide.loc[0, "Avg_std"])
    assert (tmp_path / "out" / "plots" / "delta_avg.png").stat().st_size > 0


def test_report_imports_no_trainers_and_cli(ledger_root, tmp_path):
    code = ("import sys; import prism_lab.report, prism_lab.cli.report; "
            "prism_lab.report.build_report(sys.argv[1], 'rep', sys.argv[2]); "
            "bad = [m for m in ('torch', 'transformers', 'prism_lab.trainers', 'prism_lab.stages') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code, str(ledger_root), str(tmp_path / "sub")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    import typer
    from typer.testing import CliRunner

    from prism_lab.cli.report import report

    app = typer.Typer()
    app.command()(report)
    app.command("noop")(lambda: None)  # a second command so `report` is a sub-command as in cli.py
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--help"])
    assert res.exit_code == 0 and "GRID_OR_SWEEP" in res.output and "--root" in res.output and "--out" in res.output
    res = runner.invoke(app, ["report", "rep", "--root", str(ledger_root), "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "report.md").is_file() and (tmp_path / "cli" / "results.csv").is_file()
    res = runner.invoke(app, ["report", "nope", "--root", str(ledger_root)])
    assert res.exit_code != 0 and "no sweep" in str(res.exception)


# ---- paper side by side, item intervals, text retention and drift ----------------------------------
def _one_size_ledger(tmp_path, benchmarks, values, *, seeds=(0,), items=None, drift=None, extra=None):
    """4b x grpo x {none, prism} ledger; values(role_row, seed) -> {bench: accuracy %}; items(row, seed) ->
    {bench: {item: score}}; drift(row, seed) and extra(row, seed) -> {metric: value}."""
    root = tmp_path / "root"
    ledger = Ledger(root)
    spec = spec_for(name="one", benchmarks=benchmarks, size=["4b"], algorithm=["grpo"], seed=list(seeds))
    plan = make_plan(spec, tmp_path / "one.yaml")
    ledger.record_plan(plan)
    for cell in plan.cells:
        for role, key in cell.runs.items():
            if ledger.get_run(key).status == "done":
                continue
            if role.startswith("eval/"):
                row, seed = row_of(role, cell.axes), cell.axes["seed"]
                ledger.log_metrics(key, 0, {f"eval/{b}/accuracy": v / 100 for b, v in values(row, seed).items()})
                for b, sc in (items(row, seed) if items else {}).items():
                    ledger.log_item_scores(key, b, sc)
                if drift:
                    ledger.log_metrics(key, 0, drift(row, seed))
                if extra:
                    ledger.log_metrics(key, 0, extra(row, seed))
            ledger.mark_done(key, "x")
    ledger.close()
    return root


def test_paper_side_by_side_only_for_the_papers_benchmarks(tmp_path):
    avg = {"+SFT": 60.0, "SFT+GRPO": 62.8, "PRISM": 61.0, "PRISM+GRPO": 66.0}
    root = _one_size_ledger(tmp_path, ["HallusionBench", "synth-reasoning"],
                            lambda row, seed: {"HallusionBench": avg[row], "synth-reasoning": 40.0})
    text = build_report(root, "one", tmp_path / "out").markdown.read_text()
    side = {r["Method"]: r for r in md_rows(md_section(text, "### Size 4b"))}
    assert list(side) == ["+SFT", "SFT+GRPO", "PRISM", "PRISM+GRPO"]
    assert side["SFT+GRPO"]["HalluBench ours (HallusionBench)"] == "62.8 ± –"
    assert side["SFT+GRPO"]["HalluBench paper"] == "72.0" and side["+SFT"]["HalluBench paper"] == "69.1"
    assert not [h for h in side["SFT+GRPO"] if "synth-reasoning" in h]  # a stand-in never sits beside the paper
    r = {x["Δ"]: x for x in md_rows(md_section(text, "### Deltas vs the paper's"))}["PRISM+GRPO − SFT+GRPO"]
    assert r["ours (mean over HalluBench)"] == "+3.2" and r["paper (mean over HalluBench)"] == "+2.8"
    assert r["paper Avg Δ (7 benchmarks)"] == "+4.4"


def test_one_seed_deltas_get_item_intervals(tmp_path):
    n = 200
    # PRISM+GRPO answers items 0..119 right, SFT+GRPO items 0..79: +20 points, every flip in one direction
    right = {"SFT+GRPO": 80, "PRISM+GRPO": 120, "+SFT": 100, "PRISM": 100}

    def items(row, seed):
        return {"synth-reasoning": {str(i): float(i < right[row]) for i in range(n)}}

    root = _one_size_ledger(tmp_path, ["synth-reasoning"], lambda row, seed: {"synth-reasoning": right[row] / 2},
                            items=items)
    paths = build_report(root, "one", tmp_path / "out")
    text = paths.markdown.read_text()
    got = {r["Δ"]: r for r in md_rows(md_section(text, "## Deltas"))}
    r = got["PRISM+GRPO − SFT+GRPO"]
    assert r["Avg significant"] == "n/a (1 seed)" and r["Avg 95% CI"] == "–"  # seeds: one, so no interval
    assert r["Avg"] == "+20.0†" and r["items"] == "200" and r["Avg significant (items)"] == "yes"
    low, high = (float(x) for x in r["Avg 95% CI (items)"].strip("[]").split(", "))
    # 40 of 200 items flip, all the same way: the resampled mean is 100 * Binomial(200, 0.2) / 200
    assert 13.0 < low < 17.0 and 23.0 < high < 27.0
    same = got["PRISM − +SFT"]
    assert same["Avg"] == "+0.0" and same["Avg 95% CI (items)"] == "[+0.0, +0.0]"
    assert same["Avg significant (items)"] == "no"
    d = pd.read_csv(paths.deltas_csv)
    row = d[(d["comparison"] == "PRISM+GRPO − SFT+GRPO") & (d["benchmark"] == "Avg")].iloc[0]
    assert row["item_mean"] == pytest.approx(20.0) and row["item_n"] == n and bool(row["item_significant"])
    assert row["item_method"] == "item_bootstrap" and row["method"] == "paired_t"
    assert "Significance over items" in text and "Significance over seeds" in text


def test_text_retention_group_and_drift_picture(tmp_path):
    acc = {"+SFT": (50.0, 30.0), "SFT+GRPO": (60.0, 25.0), "PRISM": (52.0, 32.0), "PRISM+GRPO": (66.0, 31.0)}
    drift = {"+SFT": (0.8, 1.2), "SFT+GRPO": (1.1, 1.4), "PRISM": (0.9, 0.9), "PRISM+GRPO": (1.2, 1.0)}

    def values(row, seed):
        return {"synth-reasoning": acc[row][0], "synth-text": acc[row][1]}

    def drift_of(row, seed):
        kl, nll = drift[row]
        out = {"drift/kl_from_base": kl, "drift/teacher_nll": nll, "drift/base_teacher_nll": 3.0}
        if row.startswith("PRISM"):
            out |= {"drift/disc_gap_caption": 0.5, "drift/disc_gap_cot": 0.25}
        return out

    root = _one_size_ledger(tmp_path, ["synth-reasoning", "synth-text"], values, drift=drift_of)
    paths = build_report(root, "one", tmp_path / "out")
    text = paths.markdown.read_text()
    main = md_rows(md_section(text, "## Results: size 4b"))
    assert "synth-text" not in main[0] and main[1]["Avg"] == "60.0 ± –"  # the paper's Avg: vision only
    ret = {r["Method"]: r for r in md_rows(md_section(text, "### Retention: size 4b"))}
    assert ret["SFT+GRPO"]["synth-text"] == "25.0 ± –" and ret["PRISM+GRPO"]["Avg"] == "31.0 ± –"
    rd = {r["Δ"]: r for r in md_rows(md_section(text, "### Retention deltas"))}
    assert rd["PRISM+GRPO − SFT+GRPO"]["Avg"] == "+6.0"
    dr = {r["Checkpoint"]: r for r in md_rows(md_section(text, "## Drift"))}
    assert dr["4b Instruct"]["KL from base"] == "0.000" and dr["4b Instruct"]["teacher NLL"] == "3.000"
    assert dr["4b +SFT"]["KL from base"] == "0.800" and dr["4b +SFT"]["disc gap caption"] == "–"
    assert dr["4b PRISM+GRPO"]["teacher NLL"] == "1.000" and dr["4b PRISM+GRPO"]["disc gap cot"] == "0.250"
    png = tmp_path / "out" / "plots" / "drift.png"
    assert png in paths.plots and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plots/drift.png" in text
    d = pd.read_csv(paths.deltas_csv)
    assert set(d["group"]) == {"vision", "text retention"}
    assert (tmp_path / "out" / "retention_4b.csv").is_file()

    from prism_lab.report.drift import drift_chains
    from prism_lab.report.frame import load_sweep

    led = Ledger(root)
    chains = drift_chains(load_sweep(led, "one"))
    led.close()
    assert [p.stage for p in chains["4b PRISM+GRPO"]] == ["base", "sft", "align", "rl"]  # the arrows' order
    assert [p.stage for p in chains["4b SFT+GRPO"]] == ["base", "sft", "rl"]


# ---- chance / majority-answer baselines and the within-noise mark ----------------------------------
#: Baselines as the eval runs log them (fractions, n items). Noise bands by hand: perception
#: 2 * sqrt(0.4 * 0.6 / 100) = 0.09798 -> marked up to 49.80%; hallusion 2 * sqrt(0.6 * 0.4 / 400) = 0.04899
#: -> marked up to 64.90%.
BASELINES = {"synth-perception": (0.3, 0.4, 100), "synth-hallusion": (0.5, 0.6, 400)}
#: row -> (perception %, hallusion %, text %); the same for both seeds (std 0).
BASE_ACC = {"+SFT": (45.0, 62.5, 40.0), "SFT+GRPO": (49.7, 70.0, 41.0), "PRISM": (50.0, 64.8, 42.0),
            "PRISM+GRPO": (80.0, 30.0, 43.0)}
#: row -> the result cells that carry the `~` mark (within noise of, or below, the majority baseline)
MARKED = {"+SFT": {"synth-perception", "synth-hallusion"}, "SFT+GRPO": {"synth-perception"},
          "PRISM": {"synth-hallusion"}, "PRISM+GRPO": {"synth-hallusion"}}


def _baseline_ledger(tmp_path, majority_of=lambda row, seed, bench, p: p):
    def values(row, seed):
        return dict(zip(["synth-perception", "synth-hallusion", "synth-text"], BASE_ACC[row]))

    def extra(row, seed):
        out = {}
        for b, (ch, maj, n) in BASELINES.items():
            out |= {f"eval/{b}/chance": ch, f"eval/{b}/majority": majority_of(row, seed, b, maj), f"eval/{b}/n": n}
        return out

    return _one_size_ledger(tmp_path, ["synth-perception", "synth-hallusion", "synth-text"], values, seeds=(0, 1),
                            extra=extra)


def test_baseline_rows_and_within_noise_marks(tmp_path):
    paths = build_report(_baseline_ledger(tmp_path), "one", tmp_path / "out")
    text = paths.markdown.read_text()
    rows = {r["Method"]: r for r in md_rows(md_section(text, "## Results: size 4b"))}
    assert list(rows) == ["+SFT", "SFT+GRPO", "PRISM", "PRISM+GRPO", "chance", "majority answer"]
    for label, accs in BASE_ACC.items():
        for b, acc in zip(["synth-perception", "synth-hallusion"], accs):
            want = f"{acc:.1f} ± 0.0" + ("~" if b in MARKED[label] else "")
            assert rows[label][b] == want, (label, b)
        assert not rows[label]["Avg"].endswith("~")  # Avg is never marked
    assert rows["chance"] == {"Method": "chance", "synth-perception": "30.0", "synth-hallusion": "50.0",
                              "Avg": "40.0", "n": "–"}
    assert rows["majority answer"] == {"Method": "majority answer", "synth-perception": "40.0",
                                       "synth-hallusion": "60.0", "Avg": "50.0", "n": "–"}
    # the retention table (lm-eval: no baselines) has neither rows nor marks
    ret = md_rows(md_section(text, "### Retention: size 4b"))
    assert [r["Method"] for r in ret] == ["+SFT", "SFT+GRPO", "PRISM", "PRISM+GRPO"]
    assert not any("~" in c for r in ret for c in r.values())
    # the Method section explains the rows, the mark and the band
    method = md_section(text, "## Method")
    assert "`~` after a result" in method and "2 binomial standard errors" in method and "2·sqrt(p(1−p)/n)" in method
    assert "`majority answer`" in method and "`chance`" in method
    # the CSV has the baselines as rows, in %
    wide = pd.read_csv(paths.tables["4b"]).set_index("method")
    assert list(wide.index) == ["+SFT", "SFT+GRPO", "PRISM", "PRISM+GRPO", "chance", "majority answer"]
    assert wide.loc["chance", "synth-perception"] == pytest.approx(30.0)
    assert wide.loc["majority answer", "synth-hallusion"] == pytest.approx(60.0)
    assert wide.loc["majority answer", "Avg"] == pytest.approx(50.0)
    assert wide.loc["chance", "status"] == "baseline" and math.isnan(wide.loc["chance", "Avg_std"])
    assert list(pd.read_csv(tmp_path / "out" / "retention_4b.csv")["method"]) == list(BASE_ACC)
    # results.csv carries them as metrics of every eval run
    res = pd.read_csv(paths.results_csv)
    assert set(res[res["benchmark"] == "synth-hallusion"]["metric"]) == {"accuracy", "chance", "majority", "n"}


def test_baselines_that_disagree_show_varies_and_mark_nothing(tmp_path):
    # one run (PRISM+GRPO seed 1) read another perception file: its majority baseline differs
    def majority_of(row, seed, bench, p):
        return 0.45 if (row, seed, bench) == ("PRISM+GRPO", 1, "synth-perception") else p

    paths = build_report(_baseline_ledger(tmp_path, majority_of), "one", tmp_path / "out")
    rows = {r["Method"]: r for r in md_rows(md_section(paths.markdown.read_text(), "## Results: size 4b"))}
    assert rows["majority answer"]["synth-perception"] == "varies" and rows["majority answer"]["Avg"] == "varies"
    assert rows["majority answer"]["synth-hallusion"] == "60.0" and rows["chance"]["synth-perception"] == "30.0"
    assert not any(rows[r]["synth-perception"].endswith("~") for r in BASE_ACC)  # no single band to mark by
    assert rows["+SFT"]["synth-hallusion"] == "62.5 ± 0.0~"
    wide = pd.read_csv(paths.tables["4b"]).set_index("method")
    assert wide.loc["majority answer", "status"] == "varies: synth-perception"
    assert math.isnan(wide.loc["majority answer", "synth-perception"])
    assert wide.loc["chance", "status"] == "baseline"
