"""What a study leaves behind, regenerated from the storage at the end of every `prism-lab tune`:

* ``best.yaml`` (one objective) or ``pareto-<k>.yaml`` (two objectives, one per Pareto-optimal trial):
  a grid that `extends:` the base grid and sets the tuned stage fields, so
  ``prism-lab sweep run best.yaml`` runs the base grid's cells with the tuned settings (the tuned cell's
  runs are found done in the ledger: same configs, same content keys);
* ``summary.md``: trial counts, the best trial(s), parameter importances, the top trials;
* ``plot.png``: objective per trial with the running best (or the two objectives with the Pareto
  front), and the importances; drawn with matplotlib's Agg backend (no plotly, no display).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from prism_lab.tune.space import SearchSpace

__all__ = ["best_grid_text", "param_importances", "plot_study", "summary_markdown", "write_outputs"]


def _atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _values_text(space: SearchSpace, trial: Any) -> str:
    return ", ".join(f"{o.metric} = {v:.4g} ({o.direction})" for o, v in zip(space.objectives, trial.values))


def best_grid_text(space: SearchSpace, trial: Any, out_path: Path, *, study_name: str, title: str) -> str:
    """A grid YAML that extends the base grid with ``trial``'s parameters."""
    base = Path(space.base.path).resolve()
    rel = os.path.relpath(base, Path(out_path).resolve().parent)
    cell = ", ".join(f"{k}={v}" for k, v in space.cell.items())
    header = [
        f"# {title} of study {study_name!r} (prism-lab tune {space.path}).",
        f"# Trial {trial.number}: {_values_text(space, trial)}.",
        f"# Tuned on the cell {cell}. The axes are the base grid's, so `prism-lab sweep run` on this file",
        "# runs every cell of the base grid with these settings; fix `axes:` here to run fewer.",
    ]
    body: dict[str, Any] = {"extends": rel, "name": f"{study_name}-{out_path.stem}",
                            "description": f"{space.base.spec.description.strip()} Tuned by study {study_name} "
                                           f"(trial {trial.number}).".strip()}
    body.update(space.overrides(dict(trial.params)))
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def param_importances(study: Any, space: SearchSpace) -> list[dict[str, float] | str]:
    """Per objective: {param: importance} or the reason why there are none."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    out: list[dict[str, float] | str] = []
    for i, _ in enumerate(space.objectives):
        if len(complete) < 2:
            out.append(f"not enough complete trials ({len(complete)}; importances need at least 2)")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target = (lambda t, i=i: t.values[i]) if space.multi_objective else None
                out.append(dict(optuna.importance.get_param_importances(study, target=target)))
        except Exception as exc:  # noqa: BLE001 - e.g. every trial has the same value
            out.append(f"could not compute importances ({type(exc).__name__}: {exc})")
    return out


def plot_study(study: Any, space: SearchSpace, importances: list[dict[str, float] | str], path: Path) -> bool:
    """Write the plot; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return False
    imp = importances[0] if importances and isinstance(importances[0], dict) else None
    fig, axes = plt.subplots(1, 2 if imp else 1, figsize=(11 if imp else 6, 4), squeeze=False)
    ax = axes[0][0]
    obj = space.objectives
    if not space.multi_objective:
        xs = [t.number for t in complete]
        ys = [t.value for t in complete]
        ax.scatter(xs, ys, s=18, label="trial")
        best, run = [], None
        for y in ys:
            run = y if run is None else (max(run, y) if obj[0].direction == "maximize" else min(run, y))
            best.append(run)
        ax.step(xs, best, where="post", color="C3", label="best so far")
        pruned = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
                  if t.last_step is not None]
        if pruned:
            ax.scatter([t.number for t in pruned], [t.intermediate_values[t.last_step] for t in pruned],
                       marker="x", color="grey", label="pruned (last report)")
        ax.set_xlabel("trial")
        ax.set_ylabel(obj[0].metric)
        ax.set_title(f"{study.study_name}: {obj[0].direction} {obj[0].metric}")
        ax.legend(fontsize=8)
    else:
        front = {t.number for t in study.best_trials}
        ax.scatter([t.values[0] for t in complete if t.number not in front],
                   [t.values[1] for t in complete if t.number not in front], s=18, color="C0", label="trial")
        pf = sorted((t for t in complete if t.number in front), key=lambda t: t.values[0])
        ax.plot([t.values[0] for t in pf], [t.values[1] for t in pf], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(f"{obj[0].metric} ({obj[0].direction})")
        ax.set_ylabel(f"{obj[1].metric} ({obj[1].direction})")
        ax.set_title(f"{study.study_name}: Pareto front")
        ax.legend(fontsize=8)
    if imp:
        ax2 = axes[0][1]
        items = sorted(imp.items(), key=lambda kv: kv[1])
        ax2.barh([k for k, _ in items], [v for _, v in items], color="C2")
        ax2.set_xlabel("importance" + (f" for {obj[0].metric}" if space.multi_objective else ""))
        ax2.set_title("parameter importances (PED-ANOVA)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # per process: workers write the same study
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def summary_markdown(study: Any, space: SearchSpace, *, storage: Any, importances: list[dict[str, float] | str],
                     grid_files: list[Path], plot: Path | None, out_dir: Path) -> str:
    import optuna

    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    retried = sum(1 for t in trials if t.system_attrs.get("failed_trial") is not None)
    names = list(space.spec.parameters)
    lines = [f"# Study `{study.study_name}`", ""]
    if space.spec.description:
        lines += [space.spec.description.strip(), ""]
    lines += [
        f"- Search space: `{space.path}`; base grid `{space.base.path}`, cell "
        + ", ".join(f"{k}={v}" for k, v in space.cell.items()),
        "- Objective" + ("s" if space.multi_objective else "") + ": "
        + "; ".join(f"{o.direction} `{o.metric}` of the `{o.role}` run ({o.reduce})" for o in space.objectives),
        f"- Storage: `{storage.url}` (open it with `{storage.dashboard}`)",
        "- Trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        + (f"; {retried} of them retries of failed or killed trials" if retried else ""),
        "",
    ]
    complete = [t for t in trials if t.state == S.COMPLETE]
    if not complete:
        lines += ["No complete trial yet.", ""]
        return "\n".join(lines)

    def row(t: Any) -> str:
        vals = " | ".join(f"{v:.4g}" for v in t.values)
        return f"| {t.number} | {vals} | " + " | ".join(_fmt(t.params.get(n, "")) for n in names) + " |"

    head = "| trial | " + " | ".join(o.metric for o in space.objectives) + " | " + " | ".join(names) + " |"
    sep = "|" + "---|" * (1 + len(space.objectives) + len(names))
    if space.multi_objective:
        lines += [f"## Pareto front ({len(study.best_trials)} trial(s))", "", head, sep]
        lines += [row(t) for t in sorted(study.best_trials, key=lambda t: t.values[0])]
    else:
        lines += ["## Best trial", "", head, sep, row(study.best_trial)]
    lines += [""]
    if grid_files:
        lines += ["Grid file(s) for `prism-lab sweep run`: " + ", ".join(f"`{p.name}`" for p in grid_files), ""]
    lines += ["## Parameter importances", ""]
    for o, imp in zip(space.objectives, importances):
        title = f"For `{o.metric}`, over {len(complete)} complete trials (PED-ANOVA, normalised to 1)"
        if isinstance(imp, str):
            lines += [f"{title}: {imp}.", ""]
            continue
        lines += [f"{title}:", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(imp.items(), key=lambda kv: -kv[1])]
        lines += [""]
    top = sorted(complete, key=lambda t: t.values[0], reverse=space.objectives[0].direction == "maximize")[:10]
    lines += [f"## Top trials by `{space.objectives[0].metric}` (up to 10)", "", head, sep] + [row(t) for t in top] + [""]
    if plot is not None:
        lines += [f"![study plot]({os.path.relpath(plot, out_dir)})", ""]
    return "\n".join(lines)


def write_outputs(study: Any, space: SearchSpace, out_dir: Path, *, storage: Any) -> dict[str, Path]:
    """Write best.yaml / pareto-*.yaml, summary.md and plot.png under ``out_dir``; returns their paths."""
    import optuna

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    grid_files: list[Path] = []
    if complete:
        if space.multi_objective:
            for old in out_dir.glob("pareto-*.yaml"):
                old.unlink()
            for k, t in enumerate(sorted(study.best_trials, key=lambda t: t.values[0])):
                p = out_dir / f"pareto-{k}.yaml"
                _atomic_write(p, best_grid_text(space, t, p, study_name=study.study_name,
                                                title=f"Pareto-optimal parameters #{k}"))
                grid_files.append(p)
        else:
            p = out_dir / "best.yaml"
            _atomic_write(p, best_grid_text(space, study.best_trial, p, study_name=study.study_name,
                                            title="Best parameters"))
            grid_files.append(p)
            outputs["best"] = p
    importances = param_importances(study, space)
    plot_path = out_dir / "plot.png"
    plot = plot_path if plot_study(study, space, importances, plot_path) else None
    if plot:
        outputs["plot"] = plot
    summary = out_dir / "summary.md"
    _atomic_write(summary, summary_markdown(study, space, storage=storage, importances=importances,
                                            grid_files=grid_files, plot=plot, out_dir=out_dir))
    outputs["summary"] = summary
    for i, p in enumerate(grid_files if space.multi_objective else []):
        outputs[f"pareto-{i}"] = p
    return outputs
