"""The `data` stage's artifact: a catalog.json naming every dataset file the other stages read.

For the synthetic task the files are inside the artifact; for `source: local` they are the user's
files (fingerprinted into the run key). Stages never guess paths: they ask the catalog.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prism_lab.errors import DataError

CATALOG_FILE = "catalog.json"


@dataclass
class DataCatalog:
    """Absolute paths of the datasets of one `data` run."""

    sft_public: list[str] = field(default_factory=list)  # ShareGPT multimodal JSON files (public mixture)
    sft_teacher: list[str] = field(default_factory=list)  # ShareGPT multimodal JSON files (teacher demos)
    sft_caption: list[str] = field(default_factory=list)  # ShareGPT multimodal JSON files (image -> caption)
    sft_instruct: list[str] = field(default_factory=list)  # question -> answer rows of the `base` stage
    sft_heldout: list[str] = field(default_factory=list)  # held-out teacher rows (drift measurements only)
    rl: str | None = None  # RL parquet (verl schema + teacher fields)
    warmup: str | None = None  # discriminator warmup pairs (JSONL)
    bench_dir: str | None = None  # directory of benchmark TSVs
    image_root: str | None = None  # base for relative image paths
    source: str = "synth"

    def sft_files(self, which: list[str]) -> list[Path]:
        """The files of the named SFT datasets (public, teacher, caption, instruct), in the order named.

        A synthetic catalog must have every named set (asking for captions from data generated with
        ``n_caption: 0`` is an error); a local catalog lists all its SFT files as public.
        """
        by_name = {"public": self.sft_public, "teacher": self.sft_teacher, "caption": self.sft_caption,
                   "instruct": self.sft_instruct}
        out: list[Path] = []
        for name in which:
            if name not in by_name:
                raise DataError(f"unknown SFT dataset {name!r}; expected one of {sorted(by_name)}")
            if not by_name[name] and self.source == "synth":
                raise DataError(f"the data catalog has no {name!r} SFT files (source {self.source!r}); "
                                f"drop {name!r} from the stage's datasets"
                                + (f" or set data.synth.n_{name} > 0" if name in ("caption", "instruct") else ""))
            out += [Path(p) for p in by_name[name]]
        return out

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CATALOG_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "DataCatalog":
        path = Path(directory) / CATALOG_FILE
        try:
            raw = json.loads(path.read_text())
            cat = cls(**raw)
        except FileNotFoundError:
            raise DataError(f"{path}: no data catalog (is this the artifact of a `data` run?)") from None
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: malformed data catalog ({exc})") from None
        base = Path(directory).resolve()

        def absolute(p: str | None) -> str | None:
            return None if p is None else str(base / p) if not Path(p).is_absolute() else p

        cat.sft_public = [absolute(p) for p in cat.sft_public]
        cat.sft_teacher = [absolute(p) for p in cat.sft_teacher]
        cat.sft_caption = [absolute(p) for p in cat.sft_caption]
        cat.sft_instruct = [absolute(p) for p in cat.sft_instruct]
        cat.sft_heldout = [absolute(p) for p in cat.sft_heldout]
        cat.rl, cat.warmup = absolute(cat.rl), absolute(cat.warmup)
        cat.bench_dir, cat.image_root = absolute(cat.bench_dir), absolute(cat.image_root)
        return cat


def synth_catalog(subdir: str = "data", *, caption: bool = False, heldout: bool = False,
                  instruct: bool = False) -> DataCatalog:
    """Catalog of a synth.generate output at ``<artifact>/<subdir>`` (paths relative to the artifact,
    so the catalog stays valid when the in-progress directory is renamed). ``caption``: the output
    has an sft_caption.json (``n_caption > 0``); ``instruct``: a base_instruct.json (``n_instruct > 0``); ``heldout``: an sft_heldout.json (``n_heldout > 0``)."""
    d = subdir
    return DataCatalog(
        sft_public=[f"{d}/sft_public.json"], sft_teacher=[f"{d}/sft_teacher.json"],
        sft_caption=[f"{d}/sft_caption.json"] if caption else [],
        sft_instruct=[f"{d}/base_instruct.json"] if instruct else [],
        sft_heldout=[f"{d}/sft_heldout.json"] if heldout else [], rl=f"{d}/rl_train.parquet",
        warmup=f"{d}/warmup_pairs.jsonl", bench_dir=f"{d}/bench", image_root=d, source="synth",
    )
