"""`prism-lab tune`: Optuna ask-and-tell over harness cells, with the test-only pipeline of
tests/plugins/tune_chain.py (a shared stage, a per-trial stage with tuned fields x, y, n, mode, an eval).

Studies run in real subprocesses (`python -m prism_lab.cli tune`), each stage in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from prism_lab.errors import ConfigError
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.planning import build_plan, load_grid
from tests.conftest import REPO, cli_env

PLUGIN = "tests.plugins.tune_chain"
S = optuna.trial.TrialState


@pytest.fixture(autouse=True)
def _plugin(monkeypatch):
    monkeypatch.setenv("PRISM_LAB_PLUGINS", PLUGIN)
    import tests.plugins.tune_chain  # noqa: F401 - registers the stage kinds and the pipeline in-process


def write_base(tmp: Path, *, hold: str = "", fail: str = "") -> Path:
    counter = str(tmp / "executions.log")
    grid = {
        "name": "tbase", "pipeline": "test-tune", "axes": {"seed": [0, 1]},
        "stages": {
            "tune_shared": {"counter": counter},
            "tune_trial": {"counter": counter, "hold_file": hold, "fail_if_exists": fail},
            "tune_eval": {"counter": counter},
        },
    }
    path = tmp / "base.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def write_space(tmp: Path, name: str = "space", **changes) -> Path:
    space = {
        "name": "demo",
        "base": "base.yaml",
        "cell": {"seed": 0},
        "objective": {"role": "eval/trial", "metric": "eval/avg/accuracy", "reduce": "last", "direction": "maximize"},
        "parameters": {
            "tune_trial.x": {"type": "float", "low": 0.0, "high": 1.0},
            "tune_trial.y": {"type": "float", "low": 0.0, "high": 1.0},
            "tune_trial.n": {"type": "int", "low": 1, "high": 8, "log": True},
            "tune_trial.mode": {"type": "categorical", "choices": ["a", "b"]},
        },
    }
    space.update(changes)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def tune_cmd(space: Path, root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "prism_lab.cli", "tune", str(space), "--root", str(root), "--wandb", "disabled", *args]


def run_tune(space: Path, root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(tune_cmd(space, root, *args), capture_output=True, text=True, env=cli_env(PRISM_LAB_PLUGINS=PLUGIN),
                          cwd=REPO, timeout=timeout)


def executions(tmp: Path) -> list[str]:
    p = tmp / "executions.log"
    return p.read_text().splitlines() if p.exists() else []


def load(storage: str, name: str = "demo") -> optuna.Study:
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage[len("journal:"):]))
    return optuna.load_study(study_name=name, storage=storage)


# ---------------------------------------------------------------------------------------------------
def test_small_study_runs_shared_stage_once_prunes_and_writes_a_plannable_best_grid(tmp_path):
    write_base(tmp_path)
    space = write_space(tmp_path, pruning={"pruner": "median", "n_startup_trials": 1,
                                           "report": [{"role": "trial", "metric": "proxy"}]})
    root = tmp_path / "root"
    res = run_tune(space, root, "--trials", "4")
    assert res.returncode == 0, res.stderr
    study = load(f"sqlite:///{root / 'tune' / 'demo' / 'study.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials].count(S.COMPLETE) + [t.state for t in trials].count(S.PRUNED) == 4
    assert len(trials) == 4 and all(t.state in (S.COMPLETE, S.PRUNED) for t in trials)
    # trial 0 = the base grid's values (the "paper defaults"), enqueued
    assert trials[0].params == {"tune_trial.x": 0.5, "tune_trial.y": 0.5, "tune_trial.n": 2, "tune_trial.mode": "a"}
    assert all(0 in t.intermediate_values for t in trials)  # stage-granular report after `trial`
    for t in trials:
        assert t.user_attrs["prism_lab:sweep"] == f"demo-trial-{t.number}"
        assert t.user_attrs["prism_lab:worker"]["pid"] > 0
    # the shared stage ran once for the whole study; every trial ran its own stage once
    ex = executions(tmp_path)
    assert ex.count("shared") == 1
    assert sum(1 for e in ex if e.startswith("trial ")) == 4
    assert ex.count("eval") == sum(1 for t in trials if t.state == S.COMPLETE)
    # the ledger holds one sweep per trial
    led = Ledger(root)
    try:
        assert {f"demo-trial-{t.number}" for t in trials} <= set(led.sweep_names())
        cells = led.cells("demo-trial-0")
        assert len(cells) == 1 and set(cells[0][2]) == {"shared", "trial", "eval/trial"}
    finally:
        led.close()
    # outputs: best grid loads and plans (whole base grid, tuned settings), summary, plot
    out = root / "tune" / "demo"
    best = study.best_trial
    grid = load_grid(out / "best.yaml")
    plan = build_plan(grid)
    assert len(plan.cells) == 2  # the base grid's axes
    trial_runs = [r for r in plan.runs.values() if r.kind == "tune_trial"]
    assert trial_runs and all(r.config["x"] == best.params["tune_trial.x"] for r in trial_runs)
    assert (out / "plot.png").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "## Best trial" in summary and "Parameter importances" in summary and "plot.png" in summary
    # resuming with a larger total runs exactly the missing trials
    res = run_tune(space, root, "--trials", "5")
    assert res.returncode == 0, res.stderr
    assert len([t for t in load(f"sqlite:///{out / 'study.db'}").get_trials() if t.state.is_finished()]) == 5
    assert executions(tmp_path).count("shared") == 1


def test_two_objectives_write_the_pareto_front(tmp_path):
    write_base(tmp_path)
    space = write_space(tmp_path, second_objective={"role": "eval/trial", "metric": "length", "reduce": "mean",
                                                    "direction": "minimize"})
    root = tmp_path / "root"
    res = run_tune(space, root, "--trials", "3", "--no-enqueue-defaults")
    assert res.returncode == 0, res.stderr
    study = load(f"sqlite:///{root / 'tune' / 'demo' / 'study.db'}")
    assert len(study.directions) == 2 and len(study.get_trials(states=(S.COMPLETE,))) == 3
    fronts = sorted((root / "tune" / "demo").glob("pareto-*.yaml"))
    assert len(fronts) == len(study.best_trials) >= 1
    for f in fronts:
        build_plan(load_grid(f))
    assert "Pareto front" in (root / "tune" / "demo" / "summary.md").read_text()


def test_two_processes_on_one_journal_complete_n_trials_together(tmp_path):
    write_base(tmp_path)
    space = write_space(tmp_path)
    root = tmp_path / "root"
    journal = tmp_path / "study.journal"
    env = cli_env(PRISM_LAB_PLUGINS=PLUGIN)
    procs = [subprocess.Popen(tune_cmd(space, root, "--trials", "6", "--storage", f"journal:{journal}", *extra),
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in (["--workers", "2"], [])]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    study = load(f"journal:{journal}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [S.COMPLETE] * 6  # exactly N: no extra, none lost or left running
    assert len({t.number for t in trials}) == 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # no duplicated parameter sets
    ex = executions(tmp_path)
    assert ex.count("shared") == 1
    assert sum(1 for e in ex if e.startswith("trial ")) == 6 and ex.count("eval") == 6
    assert len({t.user_attrs["prism_lab:worker"]["pid"] for t in trials}) == 2  # both processes worked


def test_sigkill_mid_trial_then_restart_completes_the_study(tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("wait")
    write_base(tmp_path, hold=str(hold))
    space = write_space(tmp_path)
    root = tmp_path / "root"
    env = cli_env(PRISM_LAB_PLUGINS=PLUGIN)
    proc = subprocess.Popen(tune_cmd(space, root, "--trials", "3"), env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reached = Path(str(hold) + ".reached")
    deadline = time.time() + 60
    while not reached.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the trial stage never started"
        time.sleep(0.05)
    led = Ledger(root)
    stage_pid = led.conn.execute("SELECT pid FROM runs WHERE kind='tune_trial' AND status='running'").fetchone()["pid"]
    led.close()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline:  # the stage process dies with its tuner (PDEATHSIG)
        try:
            os.kill(stage_pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    storage = f"sqlite:///{root / 'tune' / 'demo' / 'study.db'}"
    assert [t.state for t in load(storage).get_trials()] == [S.RUNNING]
    hold.unlink()
    res = run_tune(space, root, "--trials", "3")
    assert res.returncode == 0, res.stderr
    assert "its worker died" in res.stderr
    trials = load(storage).get_trials()
    killed = trials[0]
    assert killed.state == S.FAIL and "killed" in killed.user_attrs["prism_lab:error"]
    complete = [t for t in trials if t.state == S.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params
    ex = executions(tmp_path)
    assert ex.count("shared") == 1
    assert sum(1 for e in ex if e.startswith("trial ")) == 4  # the killed trial's stage ran once more, no more


def test_failed_trial_is_marked_and_retried(tmp_path):
    fail = tmp_path / "fail"
    fail.write_text("x")
    write_base(tmp_path, fail=str(fail))
    space = write_space(tmp_path)
    root = tmp_path / "root"
    res = run_tune(space, root, "--trials", "1", "--max-retries", "1")
    assert res.returncode == 2 and "failed in a row" in res.stderr, res.stderr
    study = load(f"sqlite:///{root / 'tune' / 'demo' / 'study.db'}")
    failed = study.get_trials(states=(S.FAIL,))
    assert failed and "told to fail" in failed[0].user_attrs["prism_lab:error"]
    assert failed[1].system_attrs["failed_trial"] == failed[0].number and failed[1].params == failed[0].params
    fail.unlink()
    res = run_tune(space, root, "--trials", "1")
    assert res.returncode == 0, res.stderr
    assert len(load(f"sqlite:///{root / 'tune' / 'demo' / 'study.db'}").get_trials(states=(S.COMPLETE,))) == 1


# ---------------------------------------------------------------------------------------------------
BAD = [
    ("unknown path", {"parameters": {"tune_trial.nope": {"type": "float", "low": 0, "high": 1}}},
     "unknown parameter path 'tune_trial.nope'", "parameters.tune_trial.nope"),
    ("unknown stage", {"parameters": {"sft.lr": {"type": "float", "low": 0, "high": 1}}},
     "unknown parameter path 'sft.lr'", "parameters.sft.lr"),
    ("low > high", {"parameters": {"tune_trial.x": {"type": "float", "low": 0.9, "high": 0.1}}},
     "low (0.9) must be <= high (0.1)", "parameters.tune_trial.x.low"),
    ("log non-positive", {"parameters": {"tune_trial.n": {"type": "int", "low": 0, "high": 4, "log": True}}},
     "log scale needs bounds > 0", "parameters.tune_trial.n.low"),
    ("no choices", {"parameters": {"tune_trial.mode": {"type": "categorical", "choices": []}}},
     "non-empty list of `choices`", "parameters.tune_trial.mode.choices"),
    ("out of the config's range", {"parameters": {"tune_trial.x": {"type": "float", "low": 0, "high": 2}}},
     "2 is not a valid value of tune_trial.x", "parameters.tune_trial.x.high"),
    ("unknown role", {"objective": {"role": "eval/nope", "metric": "eval/avg/accuracy"}},
     "unknown objective role 'eval/nope'", "objective.role"),
    ("cell axis", {"cell": {"size": "4b"}}, "unknown axis 'size'", "cell.size"),
    ("pruning with two objectives", {"second_objective": {"role": "eval/trial", "metric": "length"},
                                     "pruning": {"report": [{"role": "trial", "metric": "proxy"}]}},
     "single objective only", "pruning"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_search_space_names_file_line_and_field(tmp_path, case):
    from prism_lab.tune.space import load_space

    _, changes, fragment, field = case
    write_base(tmp_path)
    space = write_space(tmp_path, **changes)
    with pytest.raises(ConfigError) as exc:
        load_space(space)
    msg = str(exc.value)
    assert "\n" not in msg and fragment in msg, msg
    text = space.read_text().splitlines()
    where, _, rest = msg.partition(": ")
    fname, line = where.rsplit(":", 1)
    assert fname == str(space) and rest.startswith(field + ":"), msg
    key = field.split(".")[-1] if not field.startswith("parameters.") else None
    if key and key not in ("role",):
        assert key in text[int(line) - 1], (msg, text[int(line) - 1])


def test_bad_search_space_cli_exit_code_2_one_line(tmp_path):
    write_base(tmp_path)
    space = write_space(tmp_path, parameters={"tune_trial.x": {"type": "float", "low": 1.0, "high": 0.0}})
    res = run_tune(space, tmp_path / "root", "--trials", "1")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prism-lab: error: {space}:") and "low (1.0)" in lines[0]
    assert not (tmp_path / "root" / "tune").exists()


def test_sqlite_storage_refuses_parallel_workers(tmp_path):
    from prism_lab.tune.storage import resolve_storage

    with pytest.raises(ConfigError, match="database is locked"):
        resolve_storage(f"sqlite:///{tmp_path}/s.db", root=tmp_path, study="s", workers=2)
    assert resolve_storage(None, root=tmp_path, study="s", workers=2).kind == "journal"
    assert resolve_storage(None, root=tmp_path, study="s", workers=1).kind == "sqlite"
    assert resolve_storage("postgresql://u@h/db", root=tmp_path, study="s", workers=4).kind == "rdb"


def test_disc_search_space_loads_against_the_toy_grid():
    from prism_lab.tune.space import load_space

    space = load_space(REPO / "sweeps" / "disc.yaml")
    assert space.cell == {"size": "4b", "algorithm": "grpo", "alignment": "prism", "seed": 0}
    assert space.spec.objective.role == "eval/rl" and "align.caption_weight" in space.distributions()
    defaults, _ = space.default_params()
    assert defaults["align.caption_weight"] == 0.5  # the paper's alpha
    plan = build_plan(space.trial_grid(defaults, "disc-check"))
    assert len(plan.cells) == 1 and plan.count("align") == 1
