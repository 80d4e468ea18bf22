"""The dataset classes of our synthetic benchmarks for VLMEvalKit, one per kind (see
:mod:`prism_lab.eval.vlmeval.datasets`). They subclass VLMEvalKit's classes, so importing this module
imports VLMEvalKit (through :func:`prism_lab.eval.vlmeval.tv_shim.import_vlmeval`, first); use
:func:`prism_lab.eval.vlmeval.datasets.dataset_classes`, which imports it only when needed."""

from __future__ import annotations

from prism_lab.eval.vlmeval.tv_shim import import_vlmeval

import_vlmeval()

import numpy as np  # imported after the shim (see tv_shim)
import pandas as pd
from vlmeval.dataset.image_base import ImageBaseDataset
from vlmeval.dataset.image_mcq import ImageMCQDataset
from vlmeval.dataset.image_yorn import ImageYORNDataset
from vlmeval.smp import dump, get_intermediate_file_path, load, toliststr

from prism_lab.eval.vlmeval.synth_prompt import is_na, line_options, synth_prompt_text
from prism_lab.eval.vlmeval.judge import answer_of, rule_correct

__all__ = ["PrismMCQDataset", "PrismOpenDataset", "PrismYesNoDataset"]


class _PrismSynthMixin:
    """Shared by the synthetic dataset classes (set ``prism_kind`` per class)."""

    prism_kind = "open"
    DATASET_URL: dict = {}
    DATASET_MD5: dict = {}
    #: Append "Answer Yes or No." to Yes/No questions (the checkpoint's Prompting decides).
    yesno_instruction = True
    #: Names registered with :func:`register_datasets` (for ``build_dataset``).
    REGISTERED: list[str] = []

    @classmethod
    def supported_datasets(cls):
        return list(cls.REGISTERED)

    def build_prompt(self, line):
        if isinstance(line, int):
            line = self.data.iloc[line]
        tgt = toliststr(line["image_path"]) if self.meta_only else self.dump_image(line)
        tgt = tgt if isinstance(tgt, list) else [tgt]
        msgs = [dict(type="image", value=p) for p in tgt]
        msgs.append(dict(type="text", value=synth_prompt_text(
            line, kind=self.prism_kind, yesno_instruction=self.yesno_instruction)))
        return msgs

    def _score_frame(self, eval_file):
        data = load(eval_file)
        meta = {str(i): r for i, r in zip(self.data["index"], self.data.to_dict(orient="records"))}
        hits = []
        for idx, pred in zip(data["index"], data["prediction"]):
            row = meta.get(str(idx))
            if row is None:
                raise KeyError(f"{eval_file}: index {idx!r} is not in dataset {self.dataset_name}")
            answer, _ = answer_of("" if is_na(pred) else str(pred))
            hits.append(int(rule_correct(answer, str(row["answer"]), kind=self.prism_kind,
                                         options=line_options(row))))
        data["hit"] = hits
        return data

    def evaluate(self, eval_file, **judge_kwargs):
        data = self._score_frame(eval_file)
        dump(data, get_intermediate_file_path(eval_file, "_prism_result"))
        res: dict[str, list] = {"split": ["Overall"], "Overall": [float(np.mean(data["hit"]) * 100)]}
        for col in ("category", "l2-category"):
            if col in data:
                for c in sorted({str(x) for x in data[col] if not is_na(x)}):
                    sub = data[data[col].astype(str) == c]
                    res.setdefault(c, [float(np.mean(sub["hit"]) * 100)])
        acc = pd.DataFrame({k: v for k, v in res.items()})
        dump(acc, get_intermediate_file_path(eval_file, "_acc", "csv"))
        return acc

class PrismMCQDataset(_PrismSynthMixin, ImageMCQDataset):
    """Synthetic multiple choice (options in columns A-D, answer = letter), PRISM rule scoring."""

    TYPE = "MCQ"
    prism_kind = "mcq"
    REGISTERED: list[str] = []

class PrismOpenDataset(_PrismSynthMixin, ImageBaseDataset):
    """Synthetic open answers (rows with options are judged by letter), PRISM rule scoring."""

    TYPE = "VQA"
    prism_kind = "open"
    REGISTERED: list[str] = []

class PrismYesNoDataset(_PrismSynthMixin, ImageYORNDataset):
    """Synthetic Yes/No (HallusionBench index layout), PRISM rule scoring + VLMEvalKit's Hallusion metrics."""

    TYPE = "Y/N"
    prism_kind = "yesno"
    REGISTERED: list[str] = []

    def evaluate(self, eval_file, **judge_kwargs):
        from vlmeval.dataset.utils.yorn import Hallusion_rating, YOrN_Extraction

        data = self._score_frame(eval_file)
        dump(data, get_intermediate_file_path(eval_file, "_prism_result"))
        # VLMEvalKit's own Yes/No extraction on the same (answer-tag) predictions, for comparison.
        data["extracted"] = [YOrN_Extraction(answer_of("" if is_na(p) else str(p))[0]) for p in data["prediction"]]
        data["vlmeval_score"] = [int(a == e) for a, e in zip(data["answer"].astype(str), data["extracted"])]
        data["score"] = data["hit"].astype(bool)
        storage = get_intermediate_file_path(eval_file, "_auxmatch")
        dump(data, storage)
        idx = [str(x).split("_") for x in data["index"]]
        out: dict[str, list] = {"split": ["Overall"], "Overall": [float(np.mean(data["hit"]) * 100)],
                                "vlmeval_yorn": [float(np.mean(data["vlmeval_score"]) * 100)]}
        if all(len(p) >= 6 for p in idx) and "l2-category" in data:
            h = Hallusion_rating(storage)
            row = h[h["split"] == "Overall"].iloc[0]
            out.update(aAcc=[float(row["aAcc"])], fAcc=[float(row["fAcc"])], qAcc=[float(row["qAcc"])])
        acc = pd.DataFrame(out)
        dump(acc, get_intermediate_file_path(eval_file, "_acc", "csv"))
        return acc
