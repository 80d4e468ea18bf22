"""`prism-lab eval --backend lmms_eval` where lmms-eval's virtualenv is not there: exit 2, one line naming what to
set up, nothing written (issue 34, item 1)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO
from tests.hostile.conftest import assert_user_error, cli, snapshot


def _eval(session, tmp_path, **env):
    return cli("eval", session.checkpoint, "-b", "synth-perception", "--backend", "lmms_eval", "--bench-dir",
               session.data / "bench", "--root", tmp_path / "root", timeout=300, **env)


def test_lmms_eval_backend_with_a_missing_interpreter_is_one_line(session, tmp_path):
    res = _eval(session, tmp_path, PRISM_LMMS_EVAL_PYTHON=str(tmp_path / "venv" / "bin" / "python"))
    assert_user_error(res, "PRISM_LMMS_EVAL_PYTHON=", "does not exist", "lmms-eval")
    assert snapshot(tmp_path / "root") is None


@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is not None or (REPO / ".venv-vlmeval").exists(),
                    reason="lmms-eval is reachable from here (this environment, or the checkout's .venv-vlmeval)")
def test_lmms_eval_backend_without_its_virtualenv_is_one_line(session, tmp_path):
    res = _eval(session, tmp_path, PRISM_LMMS_EVAL_PYTHON="")
    assert_user_error(res, "eval backend 'lmms_eval' needs lmms-eval", "constraints/vlmeval.txt",
                      "PRISM_LMMS_EVAL_PYTHON")
    assert snapshot(tmp_path / "root") is None
