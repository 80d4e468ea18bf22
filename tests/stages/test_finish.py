"""The one end of every training stage (stages/finish.py): rank 0 saves the policy as a plain HF checkpoint with its
prompt convention, removes the resumable states, then writes the stage's own files; the other ranks write nothing."""

from __future__ import annotations

import json

import pytest

from prism_lab.prompts import PROMPTING_FILE, Prompting
from prism_lab.stages.artifacts import MODEL_SUBDIR
from prism_lab.stages.finish import finish_stage
from prism_lab.trainers.distributed import SINGLE, DistEnv
from tests.fakes import counting_corpus


@pytest.fixture(scope="module")
def tiny():
    from prism_lab.models import build_tiny_policy, build_tokenizer

    return build_tiny_policy("tiny-xs", build_tokenizer(counting_corpus(), vocab_size=300), seed=0)


def _resume(tmp_path):
    states = [tmp_path / "resume", tmp_path / "resume.old"]
    for d in states:
        d.mkdir()
        (d / "state.json").write_text("{}")
    return states


def test_rank_0_saves_the_policy_carries_the_convention_and_cleans_up(tiny, tmp_path):
    model, processor = tiny
    start = tmp_path / "start"
    start.mkdir()
    Prompting(system_prompt=True, yesno_instruction=True).write(start)
    states = _resume(tmp_path)
    order: list[str] = []

    def write() -> dict:
        order.append("write")
        assert not any(d.exists() for d in states)  # the resumable state went before the stage's own files
        return {"done": 1}

    out = finish_stage(tmp_path, SINGLE, write=write, policy=model, processor=processor, prompting_from=start,
                       remove=[states[0]])
    assert out == {"done": 1} and order == ["write"]
    saved = tmp_path / MODEL_SUBDIR
    assert (saved / "config.json").is_file() and any(saved.glob("*.safetensors"))
    assert json.loads((saved / PROMPTING_FILE).read_text()) == json.loads((start / PROMPTING_FILE).read_text())


def test_a_written_convention_goes_next_to_the_policy(tiny, tmp_path):
    model, processor = tiny
    finish_stage(tmp_path, SINGLE, write=dict, policy=model, processor=processor,
                 prompting=Prompting(system_prompt=False, yesno_instruction=False))
    assert Prompting.from_checkpoint(tmp_path / MODEL_SUBDIR) == Prompting(system_prompt=False, yesno_instruction=False)


def test_another_rank_writes_nothing(tmp_path):
    states = _resume(tmp_path)
    called: list[int] = []
    out = finish_stage(tmp_path, DistEnv(rank=1, world_size=2), write=lambda: called.append(1) or {"x": 1},
                       remove=states)
    assert out == {} and not called and all(d.exists() for d in states)
