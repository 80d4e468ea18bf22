"""Issue 29 item 2: `tune --storage` that cannot be used, that holds another program's study of the same name,
or that is the ledger (or another program's database) is one line, exit 2, and nothing is written.

The search space tunes the test-only pipeline of tests/plugins/tune_chain.py (no training); every storage is
real: Optuna on SQLite files, made here with Optuna itself."""

from __future__ import annotations

import importlib.util
import sqlite3

import optuna
import pytest
import yaml

from tests.hostile.conftest import assert_user_error, cli, snapshot

PLUGIN = "tests.plugins.tune_chain"


@pytest.fixture
def space(tmp_path):
    counter = str(tmp_path / "executions.log")
    base = {"name": "tbase", "pipeline": "test-tune", "axes": {"seed": [0, 1]},
            "stages": {"tune_shared": {"counter": counter}, "tune_trial": {"counter": counter},
                       "tune_eval": {"counter": counter}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    spec = {"name": "demo", "base": "base.yaml", "cell": {"seed": 0},
            "objective": {"role": "eval/trial", "metric": "eval/avg/accuracy", "reduce": "last",
                          "direction": "maximize"},
            "parameters": {"tune_trial.x": {"type": "float", "low": 0.0, "high": 1.0}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tune(space, storage, *args):
    root = space.parent / "root"
    return cli("tune", space, "--root", root, "--wandb", "disabled", "--trials", "1", "--storage", storage, *args,
               cwd=space.parent, PRISM_LAB_PLUGINS=PLUGIN)


def _garbage(d):
    (d / "study.db").write_bytes(bytes(range(256)) * 20)
    return f"sqlite:///{d / 'study.db'}"


def _directory(d):
    (d / "studies").mkdir()
    (d / "studies" / "keep.txt").write_text("mine\n")
    return f"sqlite:///{d / 'studies'}"


def _foreign_database(d):
    con = sqlite3.connect(d / "notes.db")
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('precious')")
    con.commit()
    con.close()
    return f"sqlite:///{d / 'notes.db'}"


def _garbage_journal(d):
    (d / "study.journal").write_text("not a journal\n")
    return f"journal:{d / 'study.journal'}"


def _missing_driver(d):
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here")
    return "mysql://user:secret@localhost/optuna"


BAD_STORAGES = {
    "missing-driver": (_missing_driver, "MySQLdb"),
    "bogus-scheme": (lambda d: "foo://x", "foo"),
    "garbage-db-file": (_garbage, "not an SQLite database"),
    "directory": (_directory, "is a directory"),
    "foreign-database": (_foreign_database, "notes"),
    "garbage-journal": (_garbage_journal, "not an Optuna journal"),
    "ledger-sqlite": (lambda d: f"sqlite:///{d / 'root' / 'ledger.sqlite'}", "ledger"),
    "ledger-journal": (lambda d: f"journal:{d / 'root' / 'ledger.sqlite'}", "ledger"),
}


@pytest.mark.parametrize("name", list(BAD_STORAGES))
def test_a_storage_that_cannot_be_used_is_one_line_and_writes_nothing(space, name):
    make, needle = BAD_STORAGES[name]
    storage = make(space.parent)
    before = snapshot(space.parent)
    line = assert_user_error(tune(space, storage), "--storage", needle)
    assert "secret" not in line
    assert snapshot(space.parent) == before  # no ledger, no study, no lock file, the user's files untouched


def test_the_ledger_of_a_root_in_use_is_refused(space):
    """A ledger that holds runs is refused by name, and Optuna's tables never enter it."""
    root = space.parent / "root"
    res = cli("tune", space, "--root", root, "--wandb", "disabled", "--trials", "1", cwd=space.parent,
              PRISM_LAB_PLUGINS=PLUGIN)
    assert res.returncode == 0, res.stderr[-2000:]
    before = snapshot(space.parent)
    assert_user_error(tune(space, f"sqlite:///{root / 'ledger.sqlite'}", "--study", "other"), "--storage", "ledger")
    assert snapshot(space.parent) == before
    con = sqlite3.connect(root / "ledger.sqlite")
    assert "studies" not in {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    con.close()


def test_another_programs_study_of_the_same_name_is_not_adopted(space):
    db = space.parent / "shared.db"
    storage = f"sqlite:///{db}"
    other = optuna.create_study(storage=storage, study_name="demo", direction="maximize")
    trial = other.ask()
    trial.suggest_float("lr", 0.0, 1.0)
    other.tell(trial, 0.24)
    before = snapshot(space.parent)
    assert_user_error(tune(space, storage), "'demo'", str(db), "--study")
    assert snapshot(space.parent) == before  # the foreign study untouched, no lock file, no ledger

    # the same storage serves a study prism-lab made itself, and resumes it
    assert tune(space, storage, "--study", "mine", "--trials", "0").returncode == 0
    res = tune(space, storage, "--study", "mine", "--trials", "0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert optuna.load_study(study_name="mine", storage=storage).user_attrs["prism_lab:space"]["fingerprint"]
