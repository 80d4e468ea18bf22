"""`prism-lab data ...`: generate the embedded synthetic multimodal task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_lab.config.base import SEED_MAX
from prism_lab.errors import ConfigError

data_app = typer.Typer(help="Generate and inspect datasets.", no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Directory to write (must not exist or be empty).")],
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML file of SynthConfig fields (or a grid file: its `data.synth` section is used).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=SEED_MAX, help="Override the seed.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing directory.")] = False,
) -> None:
    """Write the SFT mixtures, the RL parquet, the warmup pairs and the held-out benchmark TSVs."""
    from prism_lab.data.synth.config import SynthConfig, format_validation_error
    from prism_lab.data.synth.generate import generate
    from prism_lab.harness.yamlio import load_yaml

    fields: dict = {}
    if config is not None:
        raw, _ = load_yaml(config)
        if isinstance(raw, dict) and ("axes" in raw or "extends" in raw):  # a grid file
            from prism_lab.harness.planning import load_grid

            raw = load_grid(config).spec.data.get("synth") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{config}: expected a mapping of synth options")
        fields.update(raw)
    if seed is not None:
        fields["seed"] = seed
    try:
        cfg = SynthConfig.model_validate(fields)
    except Exception as exc:  # pydantic ValidationError -> one line
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise ConfigError(f"{config or '--seed'}: {format_validation_error(exc)}") from None
        raise
    try:
        manifest = generate(cfg, out, progress=True, overwrite=overwrite)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    files = manifest.get("files", {})
    typer.echo(f"wrote {len(files)} files to {out}")
    for name, info in sorted(files.items()):
        rows = info.get("rows") if isinstance(info, dict) else None
        typer.echo(f"  {name}" + (f"  ({rows} rows)" if rows is not None else ""))
