"""The recipe loop (trainers/recipe.py) in one process: logging and save cadence, budgets, progress total."""

from __future__ import annotations

from prism_lab.trainers.common import TimeBudget
from prism_lab.trainers.distributed import SINGLE
from prism_lab.trainers.progress import StepProgress
from prism_lab.trainers.recipe import StepPlan, run_steps


class _Counter:
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.saved: list[int] = []

    def step(self, step: int) -> dict[str, float]:
        self.steps.append(step)
        return {"x": float(step)}

    def save(self, steps_done: int) -> None:
        self.saved.append(steps_done)


class _SpentAfter(TimeBudget):
    def __init__(self, n: int) -> None:
        super().__init__(max_minutes=5.0)
        self.n, self.checks = n, 0

    def spent(self) -> bool:
        self.checks += 1
        return self.checks > self.n


def test_logs_every_n_steps_and_the_last_and_saves_before_the_end_of_the_schedule():
    t, logged = _Counter(), []
    res = run_steps(t, StepPlan(total=7, log_every=3, save_every=2), SINGLE, log=lambda s, v: logged.append(s))
    assert t.steps == list(range(7)) and logged == [3, 6, 7] and t.saved == [2, 4, 6]
    assert res.steps_done == 7 and res.stopped_by == "steps"


def test_a_resumed_run_starts_after_its_steps_and_a_step_cap_saves_its_progress():
    t = _Counter()
    res = run_steps(t, StepPlan(total=5, start=3, save_every=4, schedule_end=10, save_on_stop=True), SINGLE)
    assert t.steps == [3, 4] and t.saved == [4, 5] and res.steps_done == 5


def test_the_time_budget_stops_before_the_next_step():
    t = _Counter()
    res = run_steps(t, StepPlan(total=10, budget=_SpentAfter(2), save_every=100, schedule_end=10, save_on_stop=True),
                    SINGLE)
    assert res.stopped_by == "time" and t.steps == [0, 1] and t.saved == [2]


def test_progress_lines_made_without_a_total_get_the_plans():
    lines: list[str] = []
    progress = StepProgress("x", None, total=None, keys=("x",), print_fn=lines.append, clock=lambda: 0.0)
    run_steps(_Counter(), StepPlan(total=4), SINGLE, log=progress)
    assert progress.total == 4 and lines[-1].startswith("[x] step 4/4 x 3")
