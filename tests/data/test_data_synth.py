"""The synthetic generator: determinism, option validation, answer/scene consistency, response styles."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from prism_lab.data.images import encode_png
from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.describe import desc_text, teacher_caption
from prism_lab.data.synth.files import corpus_texts, load_manifest
from prism_lab.data.synth.generate import generate
from prism_lab.data.synth.questions import derive_answer
from prism_lab.data.synth.scenes import Scene, draw
from prism_lab.errors import ConfigError
from prism_lab.prompts import FORMAT_RE, SPLIT_RE, SYSTEM_PROMPT, extract_answer

SMALL = dict(seed=3, n_sft_public=120, n_teacher=30, n_caption=12, n_rl=30, n_warmup=20, n_bench=24)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(SynthConfig(**SMALL), out)
    return out


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _scene(meta: dict) -> Scene:
    return Scene.from_list(meta["image_size"], meta["scene"])


def _check_item(meta: dict, answer: str) -> None:
    scene = _scene(meta)
    derived = derive_answer(meta["q"], meta["family"], scene)
    if meta["answer_type"] == "letter":
        assert meta["options"][answer] == derived, meta
    else:
        assert answer == derived, meta


# ----------------------------------------------------------------------------------- determinism
def test_same_config_gives_identical_files(data_dir, tmp_path):
    again = tmp_path / "again"
    m = generate(SynthConfig(**SMALL), again)
    a, b = _files(data_dir), _files(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert m == load_manifest(data_dir)


def test_different_seed_gives_different_files(data_dir, tmp_path):
    m = generate(SynthConfig(**{**SMALL, "seed": 4}), tmp_path / "other")
    ref = load_manifest(data_dir)
    for rel in ("sft_public.json", "rl_train.parquet", "bench/synth-reasoning.tsv"):
        assert m["files"][rel]["sha256"] != ref["files"][rel]["sha256"]
    assert m["fingerprint"] != ref["fingerprint"]


def test_manifest_and_layout(data_dir):
    m = load_manifest(data_dir)
    assert m["generator_version"] and m["config"]["seed"] == 3
    assert m["files"]["sft_public.json"]["rows"] == 120
    assert m["files"]["sft_teacher.json"]["rows"] == 30
    assert m["files"]["rl_train.parquet"]["rows"] == 30
    assert m["files"]["warmup_pairs.jsonl"]["rows"] == 20
    assert m["files"]["bench/synth-perception.tsv"]["rows"] == 24
    assert m["files"]["bench/synth-hallusion.tsv"]["rows"] == 24
    assert m["files"]["sft_caption.json"]["rows"] == 12
    assert m["files"]["sft_heldout.json"]["rows"] == 32  # the drift measurements' held-out teacher rows
    assert m["files"]["bench/synth-text.jsonl"]["rows"] == 100  # the lm-eval text-retention task
    assert m["images"]["count"] == 120 + 30 + 12 + 20 + 32
    assert not [p for p in data_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_heldout_rows_are_unseen_teacher_rows(data_dir):
    import json as _json

    def items(name):
        return {(_json.dumps(r["meta"]["scene"]), r["messages"][-2]["content"])
                for r in _json.loads((data_dir / name).read_text())}

    held = _json.loads((data_dir / "sft_heldout.json").read_text())
    assert all(r["messages"][-1]["role"] == "assistant" and "<caption>" in r["messages"][-1]["content"] for r in held)
    assert not items("sft_heldout.json") & (items("sft_teacher.json") | items("sft_public.json"))


def test_text_task_lines(data_dir):
    import json as _json

    lines = [_json.loads(x) for x in (data_dir / "bench" / "synth-text.jsonl").read_text().splitlines()]
    assert {x["family"] for x in lines} == {"count_words", "arithmetic"}
    for x in lines:
        assert len(set(x["choices"])) == 4 and x["choices"][x["label"]] == x["answer"]
        if x["family"] == "arithmetic":
            a, op, b = x["question"].removeprefix("What is ").rstrip("?").split()
            assert int(x["answer"]) == {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]


# ------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "bad, field",
    [
        ({"image_size": 50}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"n_rl": -1}, "n_rl"),
        ({"n_bench": "many"}, "n_bench"),
        ({"colours": []}, "colours"),
        ({"colours": ["red", "pink"]}, "colours"),
        ({"shapes": ["hexagon"]}, "shapes"),
        ({"families": ["riddles"]}, "families"),
        ({"public_wrong_answer_share": 1.5}, "public_wrong_answer_share"),
        ({"instruct_caption_first_share": -0.1}, "instruct_caption_first_share"),
        ({"min_object_size": 12, "max_object_size": 6}, "min_object_size"),
        ({"max_objects": 500}, "max_objects"),
        ({"colours": ["red"], "shapes": ["circle"]}, "at least 2 kinds"),
        ({"nonsense_option": 1}, "nonsense_option"),
    ],
)
def test_bad_options_rejected(tmp_path, bad, field):
    with pytest.raises(ConfigError) as e:
        generate({**SMALL, **bad}, tmp_path / "x")
    assert field in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_bad_constructed_config_rejected(tmp_path):
    cfg = SynthConfig.model_construct(**{**SynthConfig().model_dump(), "image_size": 48})
    with pytest.raises(ConfigError, match="image_size.*multiple of 32"):
        generate(cfg, tmp_path / "x")


def test_refuses_non_empty_out_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    tiny = {**SMALL, "n_sft_public": 4, "n_teacher": 2, "n_rl": 2, "n_warmup": 2, "n_bench": 4}
    with pytest.raises(ConfigError, match="overwrite=True"):
        generate(tiny, out)
    assert (out / "keep.txt").exists()
    generate(tiny, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------------- consistency
def test_teacher_answers_and_captions_match_the_scene(data_dir):
    rows = json.loads((data_dir / "sft_teacher.json").read_text())
    cfg = SynthConfig(**SMALL)
    for row in rows:
        meta = row["meta"]
        resp = row["messages"][-1]["content"]
        assert FORMAT_RE.match(resp), resp
        assert extract_answer(resp) == meta["answer"]
        _check_item(meta, meta["answer"])
        scene = _scene(meta)
        assert teacher_caption(scene, cfg.colours, cfg.shapes) in resp
        # the stored image is exactly the scene described in the metadata
        assert (data_dir / row["images"][0]).read_bytes() == encode_png(draw(scene))
        assert row["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert row["messages"][1]["content"].startswith("<image>")
    assert sum(r["meta"]["difficulty"] == "hard" for r in rows) == len(rows)  # teacher_hard_share = 1


def test_teacher_checks_the_options_in_order_up_to_the_answer(data_dir):
    """MCQ reasoning ends with the options checked in order, stopping at the right one, then its letter."""
    rows = json.loads((data_dir / "sft_teacher.json").read_text())
    mcq = [r for r in rows if r["meta"]["answer_type"] == "letter"]
    assert mcq
    for row in mcq:
        meta, resp = row["meta"], row["messages"][-1]["content"]
        think = resp.split("<think>\n")[1].split("\n</think>")[0].splitlines()
        letters = list(meta["options"])
        k = letters.index(meta["answer"])
        want = [f"{x}. {meta['options'][x]}: {'yes' if x == meta['answer'] else 'no'}" for x in letters[: k + 1]]
        assert think[-(k + 2):] == [*want, f"so {meta['answer']}"], think


def test_caption_rows_describe_their_image(data_dir):
    rows = json.loads((data_dir / "sft_caption.json").read_text())
    cfg = SynthConfig(**SMALL)
    assert len(rows) == 12
    prompts = set()
    for row in rows:
        scene = _scene(row["meta"])
        assert scene.objects
        assert row["messages"][-1] == {"role": "assistant",
                                       "content": f"<caption>\n{teacher_caption(scene, cfg.colours, cfg.shapes)}\n</caption>"}
        assert (data_dir / row["images"][0]).read_bytes() == encode_png(draw(scene))
        prompts.add(row["messages"][-2]["content"])
        assert row["messages"][-2]["content"].startswith("<image>")
    assert len(prompts) == 3  # every phrasing is used


def test_no_caption_file_unless_asked(tmp_path):
    tiny = {**SMALL, "n_sft_public": 4, "n_teacher": 2, "n_caption": 0, "n_rl": 2, "n_warmup": 2, "n_bench": 4}
    m = generate(tiny, tmp_path / "d")
    assert "sft_caption.json" not in m["files"] and not (tmp_path / "d" / "sft_caption.json").exists()


def _instruct_rows(out: Path, share: float) -> list[dict]:
    generate(SynthConfig(seed=5, n_sft_public=0, n_teacher=0, n_instruct=500, n_rl=0, n_warmup=0, n_bench=0,
                         n_text=0, n_heldout=0, instruct_caption_first_share=share), out)
    return json.loads((out / "base_instruct.json").read_text())


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_instruct_rows_put_the_dense_caption_first_only_on_a_share_of_counting_mcq(tmp_path, share):
    plain, rows = _instruct_rows(tmp_path / "plain", 0.0), _instruct_rows(tmp_path / "d", share)
    cfg = SynthConfig()
    first = {"mcq_count": 0, "mcq_most": 0}
    n = Counter()
    for row, ref in zip(rows, plain, strict=True):
        assert row["meta"] == ref["meta"] and row["messages"][0] == ref["messages"][0]  # same items either way
        reply, ref_reply = row["messages"][-1]["content"], ref["messages"][-1]["content"]
        assert ref_reply.startswith("<think>\n")
        _check_item(row["meta"], extract_answer(reply))
        family = row["meta"]["family"]
        n[family] += 1
        if reply != ref_reply:
            scene = _scene(row["meta"])
            assert family in first, family
            assert reply == f"<caption>\n{teacher_caption(scene, cfg.colours, cfg.shapes)}\n</caption>\n{ref_reply}"
            assert FORMAT_RE.match(reply)
            first[family] += 1
    for f in first:  # the share holds per family, within sampling noise
        assert n[f] >= 10 and abs(first[f] - share * n[f]) <= max(3.0, 0.25 * n[f]), (f, first[f], n[f])


def test_rl_rows_consistent(data_dir):
    rows = pq.read_table(data_dir / "rl_train.parquet").to_pylist()
    for i, row in enumerate(rows):
        meta = json.loads(row["extra_info"]["meta"])
        assert row["extra_info"]["index"] == i and row["extra_info"]["split"] == "train"
        assert row["data_source"] == "prism_synth"
        gt = row["reward_model"]["ground_truth"]
        assert gt in row["reward_model"]["equivalent_answers"]
        _check_item(meta, gt)
        full = row["teacher_caption"] + "\n" + row["teacher_cot"]
        m = SPLIT_RE.match(full)
        assert m and m.group(1) == row["teacher_caption"] and extract_answer(full) == gt
        assert row["images"][0]["bytes"] == encode_png(draw(_scene(meta)))


def test_public_style_and_noise(tmp_path):
    cfg = SynthConfig(seed=11, n_sft_public=500, n_teacher=0, n_rl=0, n_warmup=0, n_bench=0,
                      public_wrong_answer_share=0.3, include_system_prompt=False)
    out = tmp_path / "pub"
    generate(cfg, out)
    rows = json.loads((out / "sft_public.json").read_text())
    wrong = valid = 0
    for row in rows:
        meta = row["meta"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        _check_item(meta, meta["answer"])
        resp = row["messages"][-1]["content"]
        given = extract_answer(resp) if "<answer>" in resp else resp.strip()
        assert given == meta["response_answer"]
        assert (given != meta["answer"]) == meta["wrong_answer"]
        wrong += meta["wrong_answer"]
        valid += bool(FORMAT_RE.match(resp))
        assert FORMAT_RE.match(resp) or meta["format_error"]
    assert abs(wrong / len(rows) - 0.3) < 0.08
    assert valid / len(rows) > 0.85

    def think(r):
        return r["messages"][-1]["content"].split("<think>\n")[1].split("\n</think>")[0]

    rows = [r for r in rows if not r["meta"]["format_error"]]
    # an MCQ's public reasoning is the option check alone, down to the letter it answers (right or wrong)
    mcq = [r for r in rows if r["meta"]["answer_type"] == "letter"]
    assert len(mcq) > 50 and any(r["meta"]["wrong_answer"] for r in mcq)
    for r in mcq:
        letter = r["meta"]["response_answer"]
        lines = think(r).splitlines()
        assert lines[-1] == f"so {letter}" and lines[-2] == f"{letter}. {r['meta']['options'][letter]}: yes"
        assert [ln[0] for ln in lines[:-1]] == list("ABCD"[: "ABCD".index(letter) + 1])
    # a presence answer names the count of the asked kind (`red circles = 0`): the true one when the answer is
    # right; it says Yes exactly when that count is above 0, right or wrong
    presence = [r for r in rows if r["meta"]["family"] == "presence"]
    assert len(presence) > 30 and any(r["meta"]["wrong_answer"] for r in presence)
    for r in presence:
        kind, n = think(r).split(" = ")
        desc = tuple(r["meta"]["q"]["desc"])
        assert kind == desc_text(desc)  # `red circles` for "Is there a red circle?"
        assert (int(n) > 0) == (r["meta"]["response_answer"] == "Yes")
        if not r["meta"]["wrong_answer"]:
            assert int(n) == Scene.from_list(r["meta"]["image_size"], r["meta"]["scene"]).count(*desc)
    fams = {r["meta"]["family"] for r in rows}
    assert fams == {"count", "presence", "mcq_count", "mcq_most", "mcq_colour", "mcq_shape", "arith"}


def test_responses_are_short(data_dir):
    t = [r["messages"][-1]["content"] for r in json.loads((data_dir / "sft_teacher.json").read_text())]
    p = [r["messages"][-1]["content"] for r in json.loads((data_dir / "sft_public.json").read_text())]
    assert sum(map(len, t)) / len(t) < 240 and max(map(len, t)) < 320
    assert sum(map(len, p)) / len(p) < 120


def test_benchmarks_consistent_and_held_out(data_dir):
    train_pairs = set()
    for name in ("sft_public.json", "sft_teacher.json"):
        for row in json.loads((data_dir / name).read_text()):
            q = row["messages"][-2]["content"].removeprefix("<image>")
            train_pairs.add(((data_dir / row["images"][0]).read_bytes(), q))
    for name in ("synth-perception", "synth-reasoning", "synth-hallusion"):
        df = pd.read_csv(data_dir / "bench" / f"{name}.tsv", sep="\t", dtype=str, keep_default_na=False)
        for rec in df.to_dict(orient="records"):
            meta = json.loads(rec["meta"])
            _check_item(meta, rec["answer"])
            png = base64.b64decode(rec["image"])
            assert png == encode_png(draw(_scene(meta)))
            assert (png, rec["question"]) not in train_pairs
    perc = pd.read_csv(data_dir / "bench" / "synth-perception.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert (perc["A"] != "").any() and (perc["A"] == "").any()  # MCQ and open rows
    reas = pd.read_csv(data_dir / "bench" / "synth-reasoning.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert set(reas["category"]) == {"arith"} and reas["answer"].str.fullmatch(r"-?\d+").all()


def test_hallusion_layout(data_dir):
    df = pd.read_csv(data_dir / "bench" / "synth-hallusion.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert set(df["answer"]) == {"Yes", "No"} and (df["answer"] == "No").sum() == len(df) // 2
    ids = [tuple(i.split("_")[3:6]) for i in df["index"]]
    assert ids == list(zip(df["set_id"], df["figure_id"], df["question_id"]))
    assert df["index"].is_unique and set(df["category"]) == {"VD"}
    for _, g in df.groupby("set_id"):
        assert len(g) == 4
        # the same question flips its answer between the original and the edited figure
        for _, q in g.groupby("question_id"):
            assert sorted(q["answer"]) == ["No", "Yes"] and q["question"].nunique() == 1


def test_corpus_texts(data_dir):
    texts = list(corpus_texts(data_dir))
    assert texts.count(SYSTEM_PROMPT) == 1
    assert not any("<image>" in t for t in texts)
    joined = "\n".join(texts)
    assert "<caption>" in joined and "Answer with the letter." in joined and "Is there" in joined
