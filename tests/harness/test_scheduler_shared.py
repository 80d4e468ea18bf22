"""Both executors are the one scheduling loop of harness/executors/scheduler.py with a different Launcher:
they differ in how a run is placed and started, never in the loop."""

from __future__ import annotations

import ast
import inspect

import pytest

from prism_lab.harness.executors import ExecutorOptions, make_executor, scheduler
from prism_lab.harness.executors.local import LocalLauncher


def launcher_methods() -> list[str]:
    return [n for n, _ in inspect.getmembers(scheduler.Launcher, inspect.isfunction) if not n.startswith("_")]


def test_both_executors_are_the_scheduler_loop_with_their_launcher(tmp_path):
    pytest.importorskip("ray")
    from prism_lab.harness.executors.ray import RayLauncher

    local = make_executor(tmp_path, ExecutorOptions("local", workers=2))
    ray = make_executor(tmp_path, ExecutorOptions("ray", address="127.0.0.1:1"))  # nothing connects before run()
    assert type(local) is type(ray) is scheduler.Executor
    assert isinstance(local.launcher, LocalLauncher) and isinstance(ray.launcher, RayLauncher)
    for cls in (LocalLauncher, RayLauncher):
        for name in launcher_methods():
            got, want = inspect.signature(getattr(cls, name)), inspect.signature(getattr(scheduler.Launcher, name))
            assert len(got.parameters) >= len(want.parameters), (cls.__name__, name)


def test_no_launcher_module_has_a_loop_of_its_own():
    """The executors' modules start and poll runs; the `while True` of scheduling lives in scheduler.py only."""
    from prism_lab.harness.executors import local, ray

    for mod in (local, ray):
        tree = ast.parse(inspect.getsource(mod))
        loops = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.While)]
        classes = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.endswith("Executor")]
        assert loops == [] and classes == [], (mod.__name__, loops, classes)
