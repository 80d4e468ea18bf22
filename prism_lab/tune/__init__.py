"""Optuna studies over a grid cell: `prism-lab tune sweeps/<space>.yaml`.

* :mod:`prism_lab.tune.space`  - search-space files (base cell, parameters, objectives, pruning)
* :mod:`prism_lab.tune.study`  - the ask-and-tell loop; a trial is a one-cell sweep run by the executor
* :mod:`prism_lab.tune.output` - best-params grid YAML (or Pareto front), Markdown summary, plot
"""

from prism_lab.tune.space import SearchSpace, load_space
from prism_lab.tune.study import StorageRef, TuneOptions, TuneResult, Tuner, resolve_storage, tune

__all__ = ["SearchSpace", "StorageRef", "TuneOptions", "TuneResult", "Tuner", "load_space", "resolve_storage", "tune"]
