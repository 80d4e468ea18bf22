"""The `data` stage: generate the synthetic task, or check and catalogue local dataset files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from prism_lab.config.data import DataConfig
from prism_lab.data.catalog import DataCatalog, synth_catalog
from prism_lab.errors import DataError

if TYPE_CHECKING:  # the harness hands every runner its context; stages never import the harness
    from prism_lab.harness.context import StageContext


def _local_catalog(cfg: DataConfig) -> DataCatalog:
    local = cfg.local
    assert local is not None

    def must_exist(p: str | None, field: str) -> str | None:
        if p is None:
            return None
        path = Path(p).expanduser().resolve()
        if not path.exists():
            raise DataError(f"data.local.{field}: {path} does not exist")
        return str(path)

    sft = [must_exist(p, "sft") for p in local.sft]
    bench = local.bench_dir or os.environ.get("LMUData")
    heldout = must_exist(local.heldout, "heldout")
    return DataCatalog(sft_public=[p for p in sft if p], sft_teacher=[], sft_heldout=[heldout] if heldout else [],
                       rl=must_exist(local.rl, "rl"),
                       warmup=must_exist(local.warmup, "warmup"), bench_dir=bench,
                       image_root=must_exist(local.image_root, "image_root"), source="local")


def run(ctx: StageContext) -> dict:
    cfg: DataConfig = ctx.config  # type: ignore[assignment]
    if cfg.source == "synth":
        from prism_lab.data.synth.config import SynthConfig
        from prism_lab.data.synth.files import SFT_CAPTION, SFT_HELDOUT, SFT_INSTRUCT
        from prism_lab.data.synth.generate import generate

        target = ctx.out_dir / "data"
        manifest = generate(SynthConfig.model_validate(cfg.synth), target, progress=True, overwrite=True)
        catalog = synth_catalog("data", caption=SFT_CAPTION in manifest["files"],
                                heldout=SFT_HELDOUT in manifest["files"], instruct=SFT_INSTRUCT in manifest["files"])
        summary = {"source": "synth", "files": sorted(manifest.get("files", {}))}
    else:
        catalog = _local_catalog(cfg)
        summary = {"source": "local"}
    catalog.save(ctx.out_dir)
    return summary
