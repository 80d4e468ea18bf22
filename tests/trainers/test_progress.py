"""Progress lines of the RL, alignment and discriminator warm-up loops (``trainers/progress.py``)."""

from __future__ import annotations

from prism_lab.trainers.progress import StepProgress


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _run(progress: StepProgress, clock: FakeClock, steps, values=lambda s: {"reward/mean": s / 10}):
    for s in steps:
        clock.t += 3.0
        progress(s, values(s))


def test_every_step_is_logged_and_about_twenty_are_printed():
    clock, logged, printed = FakeClock(), [], []
    p = StepProgress("rl", lambda s, v: logged.append(s), total=100, keys=("reward/mean", "acc/mean"),
                     print_fn=printed.append, clock=clock)
    _run(p, clock, range(1, 101))
    assert logged == list(range(1, 101))
    assert len(printed) == 20 and printed[0].startswith("[rl] step 5/100 reward/mean 0.5 elapsed 00:15 eta 04:45")
    assert printed[-1] == "[rl] step 100/100 reward/mean 10 elapsed 05:00"  # the last line: no eta


def test_a_resumed_run_estimates_from_its_own_steps():
    clock, printed = FakeClock(), []
    p = StepProgress("align", None, total=20, keys=("reward/mean",), print_fn=printed.append, clock=clock)
    _run(p, clock, range(11, 21))  # resumed at step 10: 3 s per step since then
    assert printed[0] == "[align] step 11/20 reward/mean 1.1 elapsed 00:03 eta 00:27"


def test_held_out_lines_are_always_printed_and_no_total_means_no_eta():
    clock, printed = FakeClock(), []
    p = StepProgress("disc_warmup", None, total=None, keys=("warmup/acc",), always_keys=("warmup/heldout_acc",),
                     print_fn=printed.append, clock=clock)
    p(0, {"warmup/heldout_acc": 0.25})
    _run(p, clock, range(1, 13), values=lambda s: {"warmup/acc": 0.5})
    assert printed == ["[disc_warmup] step 0 warmup/heldout_acc 0.25 elapsed 00:00",
                       "[disc_warmup] step 10 warmup/acc 0.5 elapsed 00:30"]


def test_other_ranks_log_but_never_print():
    clock, logged, printed = FakeClock(), [], []
    p = StepProgress("rl", lambda s, v: logged.append(s), total=2, keys=("reward/mean",), enabled=False,
                     print_fn=printed.append, clock=clock)
    _run(p, clock, [1, 2])
    assert logged == [1, 2] and printed == []
