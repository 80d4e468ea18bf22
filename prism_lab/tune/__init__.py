"""Optuna studies over a grid cell: `prism-lab tune sweeps/<space>.yaml`.

* :mod:`prism_lab.tune.space`  - a loaded search space (base cell, parameters, objectives, pruning);
  its file format in :mod:`prism_lab.tune.space_spec`, its checks in :mod:`prism_lab.tune.space_checks`
* :mod:`prism_lab.tune.study`  - the ask-and-tell loop (workers, heartbeats, tell)
* :mod:`prism_lab.tune.trial_cell` - one trial as a one-cell sweep run by the executor; objectives from the ledger
* :mod:`prism_lab.tune.storage` - SQLite / journal / RDB storage and the study lock
* :mod:`prism_lab.tune.storage_checks` - a storage that cannot be used, the ledger, another program's database
* :mod:`prism_lab.tune.optuna_study` - the Optuna study: sampler, pruner, search-space check
* :mod:`prism_lab.tune.recovery` - trials of dead workers: FAIL and retry
* :mod:`prism_lab.tune.output` - best-params grid YAML (or Pareto front), Markdown summary, plot
"""

from prism_lab.tune.space import SearchSpace, load_space
from prism_lab.tune.storage import StorageRef, resolve_storage
from prism_lab.tune.study import TuneOptions, Tuner, TuneResult, tune

__all__ = ["SearchSpace", "StorageRef", "TuneOptions", "TuneResult", "Tuner", "load_space", "resolve_storage", "tune"]
