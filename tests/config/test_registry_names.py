"""Each registry is the single source of its names: config fields check names against the registry's
source (read without importing it), so a new registered function is valid in config with no other edit."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import AfterValidator, BaseModel, ValidationError

from prism_lab.config.base import RegistryRef
from prism_lab.registry import Registry, declared_names

PKG = Path(__file__).resolve().parents[2] / "prism_lab"
CONFIG_MODULES = ["algorithms", "align", "data", "eval", "rl", "sft"]


def registry_fields() -> list[tuple[str, RegistryRef]]:
    """(Model.field, registry) of every config field whose type is a ``registered_name``."""
    out = []
    for short in CONFIG_MODULES:
        mod = importlib.import_module(f"prism_lab.config.{short}")
        for name, obj in vars(mod).items():
            if not (isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == mod.__name__):
                continue
            for fname, info in obj.model_fields.items():
                for meta in info.metadata:
                    if isinstance(meta, AfterValidator) and isinstance(meta.func, RegistryRef):
                        out.append((f"{name}.{fname}", meta.func))
    return out


FIELDS = registry_fields()


def test_the_registry_backed_fields_are_the_expected_ones():
    assert {f for f, _ in FIELDS} == {
        "AlgorithmConfig.adv_estimator", "AlgorithmConfig.policy_loss", "AlgorithmConfig.loss_agg_mode",
        "AlgorithmConfig.kl_loss_type", "ActorConfig.policy_loss", "ActorConfig.loss_agg_mode",
        "ActorConfig.kl_loss_type", "AlignConfig.loss_agg_mode", "AlignConfig.advantage_mode", "AlignConfig.variant",
        "EvalConfig.backend",
    }


@pytest.mark.parametrize("field,ref", FIELDS, ids=[f for f, _ in FIELDS])
def test_names_read_from_source_equal_the_runtime_registry(field, ref):
    runtime = getattr(importlib.import_module(ref.module), ref.registry)
    assert isinstance(runtime, Registry)
    assert sorted(declared_names(ref.module, ref.registry, ref.registrars)) == runtime.names()
    assert ref.names() == runtime.names()


def test_align_accepts_every_registered_aggregation():
    from prism_lab.algos.aggregation import AGGREGATIONS
    from prism_lab.config.align import AlignConfig

    assert "seq-mean-token-sum-norm" in AGGREGATIONS
    for mode in AGGREGATIONS.names():
        assert AlignConfig(loss_agg_mode=mode).loss_agg_mode == mode


def test_an_unknown_name_lists_the_known_ones():
    from prism_lab.config.align import AlignConfig

    with pytest.raises(ValidationError) as exc:
        AlignConfig(advantage_mode="nope")
    msg = str(exc.value)
    assert "unknown advantage mode 'nope'; known: acc_gating, align, gated_align, rlvr, rlvr_v2, sign_align" in msg


def test_an_unknown_loss_is_a_config_error_naming_the_field():
    from prism_lab.config.algorithms import resolve_algorithm
    from prism_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"algorithm\.policy_loss: .*unknown policy loss 'ppo2'; known: gspo, "
                                          r"gspo_token, vanilla"):
        resolve_algorithm("grpo", {"policy_loss": "ppo2"})


def test_a_grid_with_an_unknown_aggregation_fails_at_plan_time_naming_the_line(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(textwrap.dedent(f"""\
        extends: {PKG.parent / 'experiments' / 'smoke.yaml'}
        stages:
          align:
            loss_agg_mode: token-sum
        """))
    res = subprocess.run([sys.executable, "-m", "prism_lab.cli", "sweep", "plan", str(grid)],
                         capture_output=True, text=True, cwd=PKG.parent, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert "loss_agg_mode" in res.stderr and "token-sum" in res.stderr and "seq-mean-token-sum-norm" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_name_that_is_not_a_literal_is_refused(tmp_path, monkeypatch):
    (tmp_path / "regmod_dyn.py").write_text(
        "from prism_lab.registry import Registry\nR = Registry('thing')\nfor n in ('a', 'b'):\n    R.add(n, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="string literal"):
        declared_names("regmod_dyn", "R")


def test_runtime_registrations_of_an_imported_module_count(tmp_path, monkeypatch):
    (tmp_path / "regmod_rt.py").write_text(
        "from prism_lab.registry import Registry\nR = Registry('thing')\n\n@R.register('a')\ndef a():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = RegistryRef("regmod_rt", "R", "thing")
    assert ref.names() == ["a"]
    mod = importlib.import_module("regmod_rt")
    try:
        mod.R.add("plugin", 2)
        assert ref("plugin") == "plugin"
    finally:
        sys.modules.pop("regmod_rt", None)


def test_a_new_registered_loss_is_valid_config_with_no_other_edit(tmp_path):
    """Copy the package, add one registered policy loss, and the config accepts its name (no torch)."""
    copy = tmp_path / "prism_lab"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "algos" / "policy_loss.py").open("a") as f:
        f.write('\n\n@POLICY_LOSSES.register("my_new_loss")\ndef my_new_loss(*args, **kwargs):\n    raise NotImplementedError\n')
    probe = ("import sys; from prism_lab.config.algorithms import resolve_algorithm; "
             "cfg = resolve_algorithm('grpo', {'policy_loss': 'my_new_loss'}); "
             "print(cfg.policy_loss, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["my_new_loss", "False"]
