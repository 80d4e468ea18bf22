"""Readers: round-trip the generated files, and reject malformed rows naming file, row and field."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from prism_lab.data.bench_tsv import read_benchmark_tsv, write_benchmark_tsv
from prism_lab.data.images import encode_png, load_image
from prism_lab.data.rl_parquet import RL_SCHEMA, read_rl_parquet
from prism_lab.data.sft_json import read_sft_json
from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.generate import generate
from prism_lab.data.warmup_jsonl import read_warmup_jsonl
from prism_lab.errors import DataError
from prism_lab.prompts import FORMAT_RE

SMALL = dict(seed=5, n_sft_public=40, n_teacher=12, n_rl=12, n_warmup=10, n_bench=12)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("readers") / "data"
    generate(SynthConfig(**SMALL), out)
    return out


@pytest.fixture
def png() -> bytes:
    return encode_png(Image.new("RGB", (32, 32), (255, 0, 0)))


def _raises(fn, *needles: str) -> str:
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ------------------------------------------------------------------------------------ round trips
def test_read_sft_roundtrip(data_dir):
    for name, n in (("sft_public.json", 40), ("sft_teacher.json", 12)):
        rows = read_sft_json(data_dir / name)
        assert len(rows) == n
        ex = rows[0]
        assert ex.messages[-1]["role"] == "assistant" and ex.response == ex.messages[-1]["content"]
        assert ex.system is not None and ex.prompt_messages[-1]["role"] == "user"
        assert ex.images[0].is_absolute() and ex.images[0].parent == data_dir / "images"
        (img,) = ex.load_images()
        assert img.mode == "RGB" and img.size == (64, 64)
        assert ex.meta["family"]
    assert all(FORMAT_RE.match(e.response) for e in read_sft_json(data_dir / "sft_teacher.json"))


def test_read_sft_image_root(data_dir, tmp_path):
    rows = json.loads((data_dir / "sft_teacher.json").read_text())[:2]
    p = tmp_path / "elsewhere.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(DataError):
        read_sft_json(p)  # relative to the JSON's own directory: not there
    got = read_sft_json(p, image_root=data_dir)
    assert got[0].images[0] == data_dir / rows[0]["images"][0]


def test_read_sft_conversations_form(tmp_path, png):
    (tmp_path / "a.png").write_bytes(png)
    row = {"conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "r"}], "images": ["a.png"]}
    p = tmp_path / "c.json"
    p.write_text(json.dumps([row]))
    (ex,) = read_sft_json(p)
    assert [m["role"] for m in ex.messages] == ["user", "assistant"] and ex.response == "r"


def test_read_rl_roundtrip(data_dir):
    rows = read_rl_parquet(data_dir / "rl_train.parquet", require_teacher=True)
    assert len(rows) == 12
    r = rows[3]
    assert r.index == 3 and r.data_source == "prism_synth" and r.family
    assert r.ground_truth in r.equivalent_answers
    assert r.teacher_caption.startswith("<caption>") and r.teacher_cot.startswith("<think>")
    assert FORMAT_RE.match(r.teacher_caption + "\n" + r.teacher_cot)
    assert r.prompt[-1]["role"] == "user" and r.prompt[-1]["content"].count("<image>") == 1
    (img,) = r.load_images()
    assert img.size == (64, 64)
    assert r.meta["family"] == r.family


def test_read_warmup_roundtrip(data_dir):
    pairs, skipped = read_warmup_jsonl(data_dir / "warmup_pairs.jsonl")
    assert skipped == 0 and len(pairs) == 20
    assert [p.kind for p in pairs[:2]] == ["caption", "cot"]
    assert pairs[0].teacher.startswith("<caption>") and pairs[1].student.startswith("<think>")
    assert pairs[0].load_image().size == (64, 64)


def test_read_bench_roundtrip(data_dir):
    for name in ("synth-perception", "synth-reasoning", "synth-hallusion"):
        items = read_benchmark_tsv(data_dir / "bench" / f"{name}.tsv")
        assert len(items) == 12
        assert items[0].image.size == (64, 64)
        for it in items:
            if it.options:
                assert it.answer in it.options and it.prompt.endswith("Answer with the letter.")
                assert "A. " in it.prompt
            else:
                assert it.prompt == it.question
    h = read_benchmark_tsv(data_dir / "bench" / "synth-hallusion.tsv")
    assert isinstance(h[0].index, str) and h[0].extra["l2-category"] == "presence"
    p = read_benchmark_tsv(data_dir / "bench" / "synth-perception.tsv")
    assert isinstance(p[0].index, int) and p[0].category


def test_load_image_forms(tmp_path, png):
    f = tmp_path / "x.png"
    f.write_bytes(png)
    b64 = base64.b64encode(png).decode()
    for ref in (f, str(f), png, {"bytes": png, "path": None}, {"bytes": None, "path": str(f)}, b64,
                Image.open(f)):
        img = load_image(ref)
        assert img.mode == "RGB" and img.size == (32, 32)
    assert load_image("x.png", base_dir=tmp_path).size == (32, 32)
    _raises(lambda: load_image(b"not an image", where="W"), "W:", "decoded")
    _raises(lambda: load_image("A" * 100 + "!!!", where="W"), "W:")
    _raises(lambda: load_image(tmp_path / "missing.png"), "not found")
    _raises(lambda: load_image(3.5), "float")


# --------------------------------------------------------------------------------- malformed: SFT
def _sft(tmp_path: Path, rows) -> Path:
    p = tmp_path / "sft.json"
    p.write_text(json.dumps(rows))
    return p


def _good_sft(img="a.png"):
    return {"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "r"}],
            "images": [img]}


def test_sft_malformed(tmp_path, png):
    (tmp_path / "a.png").write_bytes(png)
    good = _good_sft()
    p = _sft(tmp_path, [good, _good_sft("missing.png")])
    _raises(lambda: read_sft_json(p), str(p), "row 1", "'images'", "missing.png")
    p = _sft(tmp_path, [good, {**good, "images": []}])
    _raises(lambda: read_sft_json(p), "row 1", "'images'", "placeholders")
    bad = _good_sft()
    bad["messages"][1]["content"] = "  "
    p = _sft(tmp_path, [good, good, bad])
    _raises(lambda: read_sft_json(p), "row 2", "content", "non-empty")
    p = _sft(tmp_path, [{**good, "messages": "hello"}])
    _raises(lambda: read_sft_json(p), "row 0", "'messages'", "list")
    p = _sft(tmp_path, [{**good, "images": [3]}])
    _raises(lambda: read_sft_json(p), "row 0", "'images'", "strings")
    p = _sft(tmp_path, [{"messages": [{"role": "assistant", "content": "r"}], "images": []}])
    _raises(lambda: read_sft_json(p), "row 0", "user turn")
    p = _sft(tmp_path, [{"images": []}])
    _raises(lambda: read_sft_json(p), "row 0", "'messages'")
    p.write_text("{not json")
    _raises(lambda: read_sft_json(p), str(p), "JSON")


# ---------------------------------------------------------------------------------- malformed: RL
def _rl_row(png: bytes, **over):
    row = {
        "data_source": "x",
        "prompt": [{"role": "user", "content": "<image>q"}],
        "images": [{"bytes": png, "path": None}],
        "reward_model": {"ground_truth": "3", "equivalent_answers": ["3"]},
        "extra_info": {"index": 0, "family": "count", "split": "train", "item_id": "a", "difficulty": "easy", "meta": ""},
        "teacher_caption": "<caption>\n- a\n</caption>",
        "teacher_cot": "<think>\nt\n</think>\n<answer>\n3\n</answer>",
    }
    row.update(over)
    return row


def _write_rl(tmp_path: Path, rows, schema=RL_SCHEMA) -> Path:
    p = tmp_path / "rl.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), p)
    return p


def test_rl_malformed(tmp_path, png):
    good = _rl_row(png)
    p = _write_rl(tmp_path, [good, _rl_row(png, teacher_cot="")])
    assert len(read_rl_parquet(p, require_teacher=False)) == 2
    _raises(lambda: read_rl_parquet(p, require_teacher=True), str(p), "row 1", "'teacher_cot'")
    p = _write_rl(tmp_path, [good, good, _rl_row(png, teacher_caption=None)])
    _raises(lambda: read_rl_parquet(p, require_teacher=True), "row 2", "'teacher_caption'")
    p = _write_rl(tmp_path, [_rl_row(png, images=[{"bytes": b"garbage", "path": None}])])
    _raises(lambda: read_rl_parquet(p), "row 0", "images[0]")
    p = _write_rl(tmp_path, [good, _rl_row(png, reward_model={"ground_truth": " ", "equivalent_answers": []})])
    _raises(lambda: read_rl_parquet(p), "row 1", "ground_truth", "non-empty")
    p = _write_rl(tmp_path, [_rl_row(png, images=[])])
    _raises(lambda: read_rl_parquet(p), "row 0", "'images'", "placeholders")
    p = _write_rl(tmp_path, [_rl_row(png, images=[{"bytes": None, "path": "nope.png"}])])
    _raises(lambda: read_rl_parquet(p), "row 0", "images[0]", "nope.png")
    # wrong type: prompt given as a plain string
    schema = RL_SCHEMA.set(RL_SCHEMA.get_field_index("prompt"), pa.field("prompt", pa.string()))
    p = _write_rl(tmp_path, [_rl_row(png, prompt="<image>q")], schema=schema)
    _raises(lambda: read_rl_parquet(p), "row 0", "'prompt'", "list")
    # missing teacher columns altogether
    t = pa.Table.from_pylist([good], schema=RL_SCHEMA).drop_columns(["teacher_caption", "teacher_cot"])
    pq.write_table(t, tmp_path / "noteacher.parquet")
    assert read_rl_parquet(tmp_path / "noteacher.parquet")[0].teacher_caption is None
    _raises(lambda: read_rl_parquet(tmp_path / "noteacher.parquet", require_teacher=True), "teacher_caption")
    pq.write_table(t.drop_columns(["reward_model"]), tmp_path / "norm.parquet")
    _raises(lambda: read_rl_parquet(tmp_path / "norm.parquet"), "norm.parquet", "'reward_model'")


# ------------------------------------------------------------------------------ malformed: warmup
def _jsonl(tmp_path: Path, lines) -> Path:
    p = tmp_path / "w.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


def test_warmup_skips_and_errors(tmp_path, png):
    (tmp_path / "a.png").write_bytes(png)
    full = {"prompt": "q", "image": "a.png", "teacher_caption": "tc", "student_caption": "sc",
            "teacher_cot": "tt", "student_cot": "st"}
    legacy = {"question": "q", "teacher_response": "T", "student_response": "S"}
    p = _jsonl(tmp_path, [full, {**full, "student_cot": ""}, {k: v for k, v in full.items() if k != "teacher_cot"},
                          "", legacy])
    pairs, skipped = read_warmup_jsonl(p)
    assert skipped == 2
    assert [x.kind for x in pairs] == ["caption", "cot", "response"]
    assert pairs[0].teacher == "tc" and pairs[1].student == "st" and pairs[2].image is None
    assert pairs[2].line == 5
    p = _jsonl(tmp_path, [full, "{oops"])
    _raises(lambda: read_warmup_jsonl(p), str(p), "line 2", "JSON")
    p = _jsonl(tmp_path, [full, {**full, "image": "gone.png"}])
    _raises(lambda: read_warmup_jsonl(p), "line 2", "'image'", "gone.png")
    p = _jsonl(tmp_path, [{**full, "teacher_caption": 5}])
    _raises(lambda: read_warmup_jsonl(p), "line 1", "'teacher_caption'", "string")
    p = _jsonl(tmp_path, [{**full, "prompt": ""}])
    _raises(lambda: read_warmup_jsonl(p), "line 1", "'prompt'")
    # image_root overrides the file's directory
    sub = tmp_path / "sub"
    sub.mkdir()
    p2 = sub / "w.jsonl"
    p2.write_text(json.dumps(full) + "\n")
    assert read_warmup_jsonl(p2, image_root=tmp_path)[0][0].image == tmp_path / "a.png"


# ------------------------------------------------------------------------------- malformed: bench
_COLS = ["index", "image", "question", "answer", "A", "B", "category"]


def _tsv(tmp_path: Path, rows, cols=_COLS) -> Path:
    p = tmp_path / "b.tsv"
    write_benchmark_tsv(p, rows, cols)
    return p


def test_bench_malformed(tmp_path, png):
    b64 = base64.b64encode(png).decode()
    good = {"index": 0, "image": b64, "question": "q?", "answer": "A", "A": "x", "B": "y", "category": "c"}
    # a short image value reuses another row's image
    items = read_benchmark_tsv(_tsv(tmp_path, [good, {**good, "index": 1, "image": "0"}]))
    assert items[1].image.size == (32, 32) and items[1].options == {"A": "x", "B": "y"}
    p = _tsv(tmp_path, [good, {**good, "index": 7, "image": "@@@not-base64@@@" * 8}])
    _raises(lambda: read_benchmark_tsv(p), str(p), "row 1", "index 7", "'image'", "base64")
    p = _tsv(tmp_path, [good, {**good, "index": 1, "image": base64.b64encode(b"x" * 80).decode()}])
    _raises(lambda: read_benchmark_tsv(p), "row 1", "'image'")
    p = _tsv(tmp_path, [good, good | {"index": 1}, {**good, "index": 2, "answer": ""}])
    _raises(lambda: read_benchmark_tsv(p), "row 2", "index 2", "'answer'", "non-empty")
    p = _tsv(tmp_path, [{**good, "answer": "C"}])
    _raises(lambda: read_benchmark_tsv(p), "row 0", "'answer'", "option letters")
    p = _tsv(tmp_path, [good, good])
    _raises(lambda: read_benchmark_tsv(p), "row 1", "'index'", "unique")
    p = _tsv(tmp_path, [{**good, "image": ""}])
    _raises(lambda: read_benchmark_tsv(p), str(p), "'image'", "no row has an image", "keep_noimg")
    p = _tsv(tmp_path, [good, {**good, "index": 1, "image": "99"}])
    _raises(lambda: read_benchmark_tsv(p), "row 1", "'image'", "'99'")
    p = _tsv(tmp_path, [good], cols=["index", "image", "question", "A", "B"])
    _raises(lambda: read_benchmark_tsv(p), str(p), "missing column 'answer'")
