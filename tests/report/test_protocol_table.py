"""The protocol table's pure function (prism_lab/report/protocol_table.py, issue #34 item 5) against hand-computed
values: the same checkpoints under two evaluation fingerprints, per-item differences averaged over checkpoints."""

from __future__ import annotations

import pytest

from prism_lab.eval.fingerprint import eval_fingerprint
from prism_lab.report.protocol_table import protocol_deltas, render_protocol_table


def _fp(backend: str, max_new: int) -> dict:
    return eval_fingerprint(benchmark_sha256="b" * 64, data_sha256="d" * 64, prompt_template={}, backend=backend,
                            backend_version="1", decoding={"max_new_tokens": max_new}, engine="hf")


A, B = _fp("builtin", 8), _fp("vlmevalkit", 8)


def test_differences_between_two_protocols_on_shared_checkpoints():
    # checkpoints c1, c2 under A (runs a1, a2, a3: c3 only under A, so A is the reference) and B (b1, b2)
    prints = {r: {"x": A, "y": A} for r in ("a1", "a2", "a3")} | {r: {"x": B, "y": B} for r in ("b1", "b2")}
    checkpoint_of = {"a1": "c1", "a2": "c2", "a3": "c3", "b1": "c1", "b2": "c2"}
    items = {
        "a1": {"x": {"i1": 1, "i2": 1, "i3": 0}, "y": {"j1": 1, "j2": 1}},
        "a2": {"x": {"i1": 1, "i2": 0, "i3": 1}, "y": {"j1": 1, "j2": 1}},
        "a3": {"x": {"i1": 0, "i2": 0, "i3": 0}, "y": {"j1": 0, "j2": 0}},
        "b1": {"x": {"i1": 1, "i2": 0, "i3": 0}, "y": {"j1": 1, "j2": 0}},
        "b2": {"x": {"i1": 0, "i2": 0, "i3": 1}, "y": {"j1": 0, "j2": 1}},
    }
    dx, dy = protocol_deltas(prints, items, checkpoint_of)
    # x, B − A per item averaged over c1, c2: i1 (0 − 1)/2, i2 (−1 + 0)/2, i3 0 -> mean −1/3 -> −33.3 points
    assert (dx.benchmark, dx.reference["hash"], dx.other["hash"], dx.checkpoints) == ("x", A["hash"], B["hash"], 2)
    assert dx.interval.n == 3 and dx.interval.mean == pytest.approx(-100 / 3)
    assert -50.0 <= dx.interval.low <= dx.interval.mean <= dx.interval.high <= 0.0
    # y: every item differs by (0 − 1 + 0)/2... j1 (0 + −1)/2, j2 (−1 + 0)/2: all −0.5, so the interval is a point
    assert dy.interval.mean == pytest.approx(-50.0)
    assert dy.interval.low == pytest.approx(-50.0) and dy.interval.high == pytest.approx(-50.0)
    assert dy.interval.significant is True
    text = render_protocol_table([dx, dy])
    assert "## Evaluation protocols" in text
    (row,) = [r for r in text.splitlines() if r.startswith("| y |")]
    assert f"builtin `{A['hash']}`" in row and f"vlmevalkit `{B['hash']}`" in row and "backend builtin vs vlmevalkit" in row
    assert "| 2 | 2 | -50.0 | [-50.0, -50.0] |" in row


def test_one_protocol_or_no_shared_checkpoint():
    assert protocol_deltas({"a1": {"x": A}, "a2": {"x": A}}, {}, {"a1": "c1", "a2": "c2"}) == []
    assert render_protocol_table([]) == ""
    (d,) = protocol_deltas({"a1": {"x": A}, "b1": {"x": B}}, {"a1": {"x": {"i": 1}}, "b1": {"x": {"i": 0}}},
                           {"a1": "c1", "b1": "c2"})
    assert d.checkpoints == 0 and d.interval.mean is None and not d.interval.testable
