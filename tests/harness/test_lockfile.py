"""The lock comparison (prism_lab/harness/lockfile.py) on hand-written lock texts, and a guard that
constraints/core.txt pins everything the core extras need at the version installed here (CI's environment
is installed from that lock, so a package missing from it or pinned at another version is a stale lock)."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from prism_lab.harness.installed import (CORE_LOCK, LOCK_ENV, compare_with_lock, installed_extras, installed_versions,
                                         lock_path, required_closure)
from prism_lab.harness.lockfile import NOT_LOCKED, Difference, canonical, lock_differences, parse_lock
from tests.conftest import REPO

LOCK = """\
# a header comment
Jinja2==3.1.6
typing_extensions==4.16.0   # inline comment
ray==2.60.0

lm_eval==0.4.13
"""


def test_parse_lock_reads_pins_under_canonical_names():
    assert parse_lock(LOCK) == {"jinja2": "3.1.6", "typing-extensions": "4.16.0", "ray": "2.60.0",
                                "lm-eval": "0.4.13"}


@pytest.mark.parametrize("line", ["transformers>=5.0", "-e .", "foo @ https://x/y.whl", "torch"])
def test_parse_lock_refuses_a_line_that_is_not_an_exact_pin(line):
    with pytest.raises(ValueError, match="line 2"):
        parse_lock(f"# header\n{line}\n")


def test_canonical_names():
    assert canonical("Typing_Extensions") == canonical("typing.extensions") == "typing-extensions"


def test_a_package_at_another_version_is_reported():
    diffs = lock_differences(parse_lock(LOCK), {"jinja2": "3.1.5", "typing-extensions": "4.16.0"}, set())
    assert diffs == [Difference("jinja2", "3.1.5", "3.1.6")]
    assert diffs[0].line() == "jinja2: installed 3.1.5, locked 3.1.6"


def test_equal_versions_written_differently_match():
    assert lock_differences({"numpy": "2.0"}, {"numpy": "2.0.0"}, set()) == []


def test_a_missing_locked_package_is_reported_only_when_needed():
    locked = parse_lock(LOCK)
    installed = {"jinja2": "3.1.6", "typing-extensions": "4.16.0"}
    assert lock_differences(locked, installed, {"jinja2"}) == []  # ray and lm-eval: extras not installed
    diffs = lock_differences(locked, installed, {"ray"})
    assert diffs == [Difference("ray", None, "2.60.0")]
    assert diffs[0].line() == "ray: not installed, locked 2.60.0"


def test_unlocked_packages_are_ignored_except_kernels():
    installed = {"jinja2": "3.1.6", "my-own-tool": "1.0", "kernels": "0.19.1", "torch": "2.13.0"}
    diffs = lock_differences({"jinja2": "3.1.6"}, installed, set())
    assert diffs == [Difference("kernels", "0.19.1", None)]
    assert diffs[0].line() == "kernels: installed 0.19.1, not in the lock"


def test_torch_and_prism_lab_are_never_compared():
    assert lock_differences({"torch": "2.4.0", "prism-lab": "0.0.1"}, {"torch": "2.13.0"}, {"prism-lab"}) == []


def test_the_core_lock_pins_everything_the_core_extras_need_at_the_installed_version():
    if os.environ.get("PRISM_LAB_UNLOCKED") == "1":
        pytest.skip("scripts/newest.sh runs without the lock on purpose (it prints the differences itself)")
    installed = installed_versions()
    extras = ("test", "lmeval", "ray")
    if not set(extras) <= set(installed_extras(installed)):
        pytest.skip(f"this environment lacks one of the extras {extras} the lock covers")
    locked = parse_lock(CORE_LOCK.read_text())
    needed = required_closure("prism-lab", extras) - NOT_LOCKED
    assert {"transformers", "lm-eval", "ray", "pytest", "aiohttp", "numpy"} <= needed  # the walk is transitive
    missing = sorted(n for n in needed if n not in locked)
    assert not missing, f"{CORE_LOCK} does not pin {missing}: regenerate it with scripts/lock.sh"
    other = {n: (installed[n], locked[n]) for n in needed if n in installed and installed[n] != locked[n]}
    assert not other, f"installed (left) differs from {CORE_LOCK} (right): {other}"
    assert "torch" not in locked and "prism-lab" not in locked and "kernels" not in locked
    assert locked["transformers"] == importlib.metadata.version("transformers")


def test_the_lock_is_read_from_the_source_tree_next_to_the_package(monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)
    assert lock_path({"transformers": "5.24.0"}) == REPO / "constraints" / "core.txt"
    assert lock_path({"ms-vlmeval": "0.0.20"}) == REPO / "constraints" / "vlmeval.txt"
    monkeypatch.setenv(LOCK_ENV, "/some/lock.txt")
    assert str(lock_path({})) == "/some/lock.txt"


def test_an_absent_or_unreadable_lock_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "nowhere.txt"))
    report = compare_with_lock()
    assert report.problem == f"no lock file at {tmp_path / 'nowhere.txt'} (not a source checkout?): nothing to compare"
    (tmp_path / "bad.txt").write_text("transformers>=5\n")
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "bad.txt"))
    report = compare_with_lock()
    assert report.problem.startswith(f"cannot read the lock {tmp_path / 'bad.txt'}: line 1:") and "\n" not in report.problem
