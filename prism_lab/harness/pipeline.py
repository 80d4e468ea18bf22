"""Pipelines turn one cell into its chain of stage runs. The default is PRISM's:

    data -> [base] -> sft -> [disc_warmup -> align] -> rl, with an `eval` run of every checkpoint.

`base` runs when the grid declares it: one run per size, shared by every cell and seed (the tiny presets'
stand-in for Qwen3-VL-Instruct); SFT then starts from its checkpoint.
"""

from __future__ import annotations

from typing import Any, Protocol

from prism_lab.config.base import SEED_MAX
from prism_lab.harness.grid import CORE_AXES, Grid, validate_config
from prism_lab.harness.inputs import check_inputs, data_fingerprint, resolve_paths
from prism_lab.harness.plan import Cell, PlanBuilder, canonical_json
from prism_lab.harness.stage_kinds import STAGE_KINDS
from prism_lab.registry import Registry


class Pipeline(Protocol):
    name: str

    def validate(self, grid: Grid) -> None: ...

    def expand(self, grid: Grid, cell: Cell, builder: PlanBuilder) -> None: ...


PIPELINES: Registry[Pipeline] = Registry("pipeline")


def get_pipeline(name: str) -> Pipeline:
    return PIPELINES.get(name)


def set_path(cfg: dict, path: list[str], value: Any) -> None:
    """Set ``cfg[a][b][c] = value`` for path [a, b, c], creating mappings on the way."""
    node = cfg
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


ALIGNMENT_VALUES = ("none", "prism", "gad")

#: Stage config fields the PRISM pipeline sets itself, and from what. An axis or a stage section that
#: sets one would be silently overridden (or would silently override a core axis): both are refused.
#: ``<stage>.seed`` is different: as an axis it is honoured (it wins over the `seed` axis for that stage).
PIPELINE_SET = {
    ("base", "model"): "the `models` map, by the `size` axis",
    ("sft", "model"): "the `models` map, by the `size` axis",
    ("rl", "algorithm"): "the `algorithm` axis",
    ("align", "variant"): "the `alignment` axis",
    ("eval", "benchmarks"): "the grid's `benchmarks` list",
}


class PrismPipeline:
    """SFT -> [PRISM alignment] -> RLVR -> eval, as in the paper (docs/prism_method.md §1)."""

    name = "prism"
    always = ("data", "sft", "rl", "eval")
    aligned = ("disc_warmup", "align")
    optional = ("base",)  # used when the grid declares it

    def check_inputs(self, grid: Grid, *, strict_benchmarks: bool = True) -> list[str]:
        """Read every local dataset and check every local checkpoint (harness/inputs.py); returns warnings."""
        return check_inputs(grid, strict_benchmarks=strict_benchmarks)

    # ---- validation -------------------------------------------------------------------------------
    def validate(self, grid: Grid) -> None:
        spec = grid.spec
        resolve_paths(grid)
        for axis in CORE_AXES:
            if axis not in spec.axes:
                raise grid.error(("axes",), f"missing required axis {axis!r} (a PRISM grid has {', '.join(CORE_AXES)})")
        used = list(self.always) + [k for k in self.optional if k in spec.stages]
        if any(v != "none" for v in spec.axes["alignment"]):
            used += list(self.aligned)
        for kind in spec.stages:
            if kind not in STAGE_KINDS or kind == "data":
                known = ", ".join(k for k in STAGE_KINDS.names() if k != "data")
                raise grid.error(("stages", kind), f"unknown stage {kind!r}; known: {known}")
        for kind in used:
            if kind != "data" and kind not in spec.stages:
                raise grid.error(("stages",), f"missing stage {kind!r}: declare it (`{kind}: {{}}` takes the paper defaults)")
        for kind in spec.seed_scope:
            if kind not in STAGE_KINDS:
                raise grid.error(("seed_scope",), f"unknown stage kind {kind!r}")
        data = validate_config(grid, STAGE_KINDS.get("data").config_model(), spec.data, ("data",))
        synth = None
        if data.source == "synth":
            from prism_lab.data.synth.config import SynthConfig

            synth = validate_config(grid, SynthConfig, data.synth, ("data", "synth"))
        for kind in used:
            if kind != "data":
                self._validate_stage(grid, kind, spec.stages[kind], ("stages", kind), synth)
        self._validate_pipeline_fields(grid)
        self._validate_sizes(grid)
        self._validate_size_stages(grid, used, synth)
        self._validate_values(grid)
        self._validate_path_axes(grid, used)
        self._validate_report(grid)
        self._validate_benchmarks(grid)

    def _validate_stage(self, grid: Grid, kind: str, section: dict, where: tuple, synth: Any) -> None:
        """One stage section against its config model and the data it will read; errors located at ``where``."""
        cfg = validate_config(grid, STAGE_KINDS.get(kind).config_model(), section, where)
        self._check_sft_sets(grid, kind, getattr(cfg, "datasets", None), synth, where)
        self._check_caption_phases(grid, kind, cfg, synth, where)

    @staticmethod
    def _check_sft_sets(grid: Grid, kind: str, datasets: list[str] | None, synth: Any, where: tuple) -> None:
        """The SFT sets a base or sft stage names exist in the data it will read (else it fails after the data
        stage, not before anything runs). Local data has one SFT set, its files (all read as `public`)."""
        if not datasets or kind not in ("base", "sft"):
            return
        for i, name in enumerate(datasets):
            if synth is None and name in ("caption", "instruct"):
                raise grid.error((*where, "datasets", i),
                                 f"{name!r} rows exist only in synthetic data; local data (data.source: local) "
                                 "gives all its SFT files as `public`")
            if synth is not None and name in ("caption", "instruct") and getattr(synth, f"n_{name}") == 0:
                raise grid.error((*where, "datasets", i),
                                 f"the synthetic data has no {name!r} rows: set data.synth.n_{name} > 0 or drop it")

    @staticmethod
    def _check_caption_phases(grid: Grid, kind: str, cfg: Any, synth: Any, where: tuple) -> None:
        """A base stage's vision and caption phases read the synthetic caption rows, whatever its datasets."""
        if kind != "base":
            return
        for field in ("vision_steps", "caption_steps"):
            if not getattr(cfg, field, 0):
                continue
            if synth is None:
                raise grid.error((*where, field), "the vision and caption phases read synthetic caption "
                                 "rows; local data has none: set it to 0")
            if synth.n_caption == 0:
                raise grid.error((*where, field), "the vision and caption phases read the caption rows: set "
                                 "data.synth.n_caption > 0 or set this to 0")

    def _validate_pipeline_fields(self, grid: Grid) -> None:
        spec = grid.spec
        for name in spec.axes:
            kind, _, field = name.partition(".")
            if (kind, field) in PIPELINE_SET:
                raise grid.error(("axes", name), f"{name} is set by the pipeline from {PIPELINE_SET[kind, field]}; "
                                                 "vary that instead")
        sections = [(("stages", kind), kind, section) for kind, section in spec.stages.items()]
        sections += [(("size_stages", size, kind), kind, section)
                     for size, kinds in spec.size_stages.items() for kind, section in kinds.items()]
        for where, kind, section in sections:
            for field in section:
                if (kind, field) in PIPELINE_SET:
                    raise grid.error((*where, field),
                                     f"set by the pipeline from {PIPELINE_SET[kind, field]}; remove it here")
                if field == "seed" and kind in spec.seed_scope:
                    raise grid.error((*where, "seed"),
                                     f"set from the `seed` axis (`{kind}` is in seed_scope); remove it here, make "
                                     f"`{kind}.seed` an axis, or drop `{kind}` from seed_scope")

    def _validate_sizes(self, grid: Grid) -> None:
        from prism_lab.models.refs import classify_model_ref

        spec = grid.spec
        for i, size in enumerate(spec.axes["size"]):
            if not isinstance(size, str) or size not in spec.models:
                known = ", ".join(spec.models) or "(none)"
                raise grid.error(("axes", "size", i), f"size {size!r} has no entry in `models` (known: {known})")
        for size, ref in spec.models.items():
            problem = classify_model_ref(ref, base=grid.path.parent).problem
            if problem:
                raise grid.error(("models", size), problem)

    def _validate_size_stages(self, grid: Grid, used: list[str], synth: Any) -> None:
        """Each `size_stages` entry names a size of `models` and a stage the grid runs, and what it makes of that
        stage's config is valid (checked merged, as the cells of that size will get it). The settings of a size that the
        `size` axis leaves out apply to nothing and are not checked against this grid's data, so that a grid which
        extends another and narrows the axis keeps the other sizes' settings without an error."""
        spec = grid.spec
        runs = [k for k in used if k != "data"]
        for size, kinds in spec.size_stages.items():
            if size not in spec.models:
                raise grid.error(("size_stages", size), f"{size!r} is not a size of `models` "
                                                        f"({', '.join(map(str, spec.models))})")
            for kind, section in kinds.items():
                if kind not in runs:
                    raise grid.error(("size_stages", size, kind), f"{kind!r} is not a stage this grid runs; expected "
                                                                  f"one of {', '.join(runs)}")
                if section and size in spec.axes["size"]:
                    self._validate_stage(grid, kind, spec.stage_section(kind, size), ("size_stages", size, kind),
                                         synth)

    def _validate_values(self, grid: Grid) -> None:
        axes = grid.spec.axes
        for i, v in enumerate(axes["alignment"]):
            if v not in ALIGNMENT_VALUES:
                raise grid.error(("axes", "alignment", i), f"expected one of {', '.join(ALIGNMENT_VALUES)}, got {v!r}")
        for i, v in enumerate(axes["seed"]):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= SEED_MAX:
                raise grid.error(("axes", "seed", i), f"expected an integer seed from 0 to 2**63-1, got {v!r}")
        from prism_lab.config.algorithms import ALGORITHM_PRESETS

        for i, v in enumerate(axes["algorithm"]):
            if not isinstance(v, str) or v not in ALGORITHM_PRESETS:
                raise grid.error(("axes", "algorithm", i),
                                 f"unknown algorithm {v!r}; known: {', '.join(ALGORITHM_PRESETS.names())}")

    def _validate_path_axes(self, grid: Grid, used: list[str]) -> None:
        for name, values in grid.spec.axes.items():
            if name in CORE_AXES:
                continue
            kind, _, rest = name.partition(".")
            if not rest or kind not in used:
                raise grid.error(("axes", name),
                                 f"unknown axis {name!r}: expected one of {', '.join(CORE_AXES)} or a config path "
                                 f"`<stage>.<field>` with stage in {', '.join(used)}")
            model = STAGE_KINDS.get(kind).config_model()
            for size in grid.spec.axes["size"]:  # strings, each once: checked by _validate_sizes and the axis rules
                for i, value in enumerate(values):
                    cfg = grid.spec.stage_section(kind, size)
                    set_path(cfg, rest.split("."), value)
                    try:
                        validate_config(grid, model, cfg, ())
                    except Exception as exc:  # re-locate at the axis value
                        detail = str(exc).split(": ", 2)[-1]
                        raise grid.error(("axes", name, i),
                                         f"invalid value for {rest!r} of stage {kind!r}: {detail}") from None

    def _validate_report(self, grid: Grid) -> None:
        rep = grid.spec.report
        if rep.compare_axis not in grid.spec.axes:
            raise grid.error(("report", "compare_axis"), f"{rep.compare_axis!r} is not an axis of this grid")
        values = grid.spec.axes[rep.compare_axis]
        for field in ("baseline", "treatment"):
            if getattr(rep, field) not in values:
                raise grid.error(("report", field), f"{getattr(rep, field)!r} is not a value of axis {rep.compare_axis!r} ({values})")
        if rep.significance not in ("paired_t", "bootstrap"):
            raise grid.error(("report", "significance"), "expected `paired_t` or `bootstrap`")

    def _validate_benchmarks(self, grid: Grid) -> None:
        if not grid.spec.benchmarks:
            raise grid.error(("benchmarks",), "expected at least one benchmark name")
        try:
            from prism_lab.eval.benchmarks import list_benchmarks
        except ImportError:
            return
        known = set(list_benchmarks())
        for i, name in enumerate(grid.spec.benchmarks):
            if name not in known:
                raise grid.error(("benchmarks", i), f"unknown benchmark {name!r}; known: {', '.join(sorted(known))}")
        from prism_lab.errors import ConfigError
        from prism_lab.eval.benchmarks import load_benchmark
        from prism_lab.eval.lmeval_tasks import check_task_reference

        for i, name in enumerate(grid.spec.benchmarks):
            spec = load_benchmark(name)
            if spec.kind == "lmeval":
                try:  # a task lm-eval lacks fails here, not after training
                    check_task_reference(spec)
                except ConfigError as exc:
                    raise grid.error(("benchmarks", i), str(exc)) from None

    # ---- expansion --------------------------------------------------------------------------------
    def expand(self, grid: Grid, cell: Cell, builder: PlanBuilder) -> None:
        spec, ax = grid.spec, cell.axes
        overrides: dict[str, dict[str, Any]] = {}
        for name, value in ax.items():
            if name not in CORE_AXES:
                kind, _, rest = name.partition(".")
                overrides.setdefault(kind, {})[rest] = value

        def cfg(kind: str, seeded: bool = True, **fixed: Any) -> dict:
            out = spec.stage_section(kind, ax["size"])
            for k, v in fixed.items():
                out[k] = v
            if seeded and kind in spec.seed_scope and kind != "data":
                out["seed"] = ax["seed"]
            for path, v in overrides.get(kind, {}).items():  # after the seed: a `<stage>.seed` axis wins
                set_path(out, path.split("."), v)
            return out

        def label(kind: str, *parts: str) -> str:
            extra = [f"{k}={v}" for k, v in ax.items() if k not in CORE_AXES and k.split(".")[0] in parts]
            return " ".join([kind, *[f"{p}={ax[p]}" for p in parts if p in ax], *extra])

        data_cfg = cfg("data")
        fp = ""
        if data_cfg.get("source") == "local":
            local = data_cfg.get("local") or {}
            memo_key = "data-fingerprint:" + canonical_json(local)
            if memo_key not in builder.memo:
                builder.memo[memo_key] = data_fingerprint(grid, local)
            fp = builder.memo[memo_key]
        data = builder.add("data", data_cfg, {}, label="data", cell=cell, role="data", fingerprint=fp,
                           where=("data",))
        sft_inputs = {"data": data}
        if "base" in spec.stages:
            seeded = "base" in spec.seed_scope  # else one base run (and one eval of it) per size, for every seed
            base_up = ["size", "data", "base"] + (["seed"] if seeded else [])
            base = builder.add("base", cfg("base", model=spec.models[ax["size"]]), {"data": data},
                               label=label("base", *base_up), cell=cell, role="base")
            self._eval(builder, lambda kind, **kw: cfg(kind, seeded=seeded, **kw), cell, base, data, "base",
                       label("eval:base", *base_up, "eval"))
            sft_inputs["policy"] = base
        up = ["size", "seed", "sft", "data"] + (["base"] if "base" in spec.stages else [])
        sft = builder.add("sft", cfg("sft", model=spec.models[ax["size"]]), sft_inputs,
                          label=label("sft", *up), cell=cell, role="sft")
        self._eval(builder, cfg, cell, sft, data, "sft", label("eval:sft", *up, "eval"))
        policy = sft
        if ax["alignment"] != "none":
            dw = builder.add("disc_warmup", cfg("disc_warmup"), {"policy": sft, "data": data},
                             label=label("disc_warmup", *up, "disc_warmup"), cell=cell, role="disc_warmup")
            up += ["alignment", "disc_warmup", "align"]
            policy = builder.add("align", cfg("align", variant=ax["alignment"]),
                                 {"policy": sft, "discriminator": dw, "data": data},
                                 label=label("align", *up), cell=cell, role="align")
            self._eval(builder, cfg, cell, policy, data, "align", label("eval:align", *up, "eval"))
        up += ["algorithm", "rl"] + ([] if "alignment" in up else ["alignment"])
        rl = builder.add("rl", cfg("rl", algorithm=ax["algorithm"]), {"policy": policy, "data": data},
                         label=label("rl", *up), cell=cell, role="rl")
        self._eval(builder, cfg, cell, rl, data, "rl", label("eval:rl", *up, "eval"))

    @staticmethod
    def _eval(builder: PlanBuilder, cfg: Any, cell: Cell, ckpt: str, data: str, of: str, label: str) -> None:
        raw = cfg("eval", benchmarks=list(builder.grid.spec.benchmarks))
        builder.add("eval", raw, {"checkpoint": ckpt, "data": data}, label=label, cell=cell, role=f"eval/{of}",
                    fingerprint=eval_protocol(builder, builder.resolve_config("eval", raw, ("stages", "eval"))))


def eval_protocol(builder: PlanBuilder, config: dict) -> str:
    """The part of an eval run's evaluation fingerprint its config and inputs do not already key
    (``prism_lab.eval.fingerprint.protocol_key``: the benchmark definitions, the external backends' versions),
    computed once per plan for each benchmark list and backend."""
    memo = "eval-protocol:" + canonical_json([config["benchmarks"], config["backend"]])
    if memo not in builder.memo:
        from prism_lab.eval.fingerprint import protocol_key

        builder.memo[memo] = protocol_key(config["benchmarks"], config["backend"])
    return builder.memo[memo]


PIPELINES.add("prism", PrismPipeline())
