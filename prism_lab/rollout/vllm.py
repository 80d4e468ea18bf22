"""Optional vLLM rollout engine (GPU only). Same output contract as :class:`prism_lab.rollout.HFGenerateEngine`.

vllm is not a dependency of prism-lab and is never imported at module import time; building the
engine without vllm raises :class:`prism_lab.errors.PrismError`. This module has NOT been tested
in the CPU development environment (vllm is not installed there): treat it as a thin, readable
adapter and check it on a GPU machine before relying on it.

Differences from the HF engine that callers must know:
- ``logprobs`` are vLLM's sampled-token log-probs (``SamplingParams(logprobs=0)``); depending on
  the vLLM version and ``logprobs_mode`` these are computed before or after temperature. The RL
  trainer therefore never uses them as PPO ``old_logp`` without checking them against its own
  forward pass (it recomputes when they disagree).
- Weights live in the vLLM process: after each optimiser step call :meth:`VLLMEngine.sync_weights`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from prism_lab.errors import PrismError
from prism_lab.rollout.inputs import prompt_texts
from prism_lab.rollout.types import Prompt, Rollout

__all__ = ["VLLMEngine", "llm_kwargs"]


def _import_vllm():
    try:
        import vllm  # type: ignore[import-not-found]
    except ImportError as exc:
        raise PrismError(
            f"the vLLM rollout engine needs the vllm package ({exc}); install it on a GPU machine or use "
            "rollout_engine: hf"
        ) from None
    return vllm


def llm_kwargs(checkpoint_dir: str | Path, *, max_model_len: int, gpu_memory_utilization: float = 0.6,
               dtype: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for a checkpoint directory. ``max_model_len`` is required: vLLM's default
    is the model's whole context (see :mod:`prism_lab.rollout.model_len`)."""
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or max_model_len < 1:
        raise ValueError(f"max_model_len must be a positive integer, got {max_model_len!r}")
    return dict(model=str(checkpoint_dir), gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, seed=seed,
                limit_mm_per_prompt={"image": 8}, max_model_len=max_model_len)


class VLLMEngine:
    """Rollouts with ``vllm.LLM`` built from a checkpoint directory (config + safetensors + processor)."""

    kind = "vllm"

    def __init__(self, checkpoint_dir: str | Path, processor, *, max_model_len: int,
                 gpu_memory_utilization: float = 0.6, dtype: str = "auto", seed: int = 0,
                 suppress_token_ids: list[int] | None = None, eos_token_ids: list[int] | None = None,
                 _tmpdir: str | None = None) -> None:
        kwargs = llm_kwargs(checkpoint_dir, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                            dtype=dtype, seed=seed)
        vllm = _import_vllm()
        self._vllm = vllm
        self.max_model_len = max_model_len
        self.processor = processor
        self.checkpoint_dir = str(checkpoint_dir)
        self.suppress_token_ids = list(suppress_token_ids or [])
        self.eos_ids = list(eos_token_ids or [])
        self._tmpdir = _tmpdir
        self.llm = vllm.LLM(**kwargs)

    @classmethod
    def from_model(cls, model, processor, *, checkpoint_dir: str | Path | None = None, **kwargs: Any) -> VLLMEngine:
        """Engine for an in-memory ``model``: uses ``checkpoint_dir`` when given, else saves the model
        to a temporary directory (removed by :meth:`close`)."""
        from prism_lab.rollout.inputs import eos_token_ids, vision_token_ids

        tmp = None
        if checkpoint_dir is None:
            from prism_lab.models import save_policy

            tmp = tempfile.mkdtemp(prefix="prism_vllm_")
            save_policy(model, processor, tmp)
            checkpoint_dir = tmp
        return cls(checkpoint_dir, processor, suppress_token_ids=vision_token_ids(model),
                   eos_token_ids=eos_token_ids(model, processor), _tmpdir=tmp, **kwargs)

    def sync_weights(self, model) -> None:
        """Push the trainer's current weights into the vLLM model (call after every optimiser step).

        Uses the in-process executor of vLLM's offline ``LLM`` (``VLLM_ENABLE_V1_MULTIPROCESSING=0``);
        the internal path differs between vLLM versions, hence the explicit error.
        """
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]
        try:
            runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner  # vLLM V1, in-process
        except AttributeError:
            try:
                runner = self.llm.llm_engine.model_executor.driver_worker.model_runner  # older V0 layout
            except AttributeError:
                raise PrismError(
                    "cannot reach the vLLM model to update its weights in this vLLM version; run with "
                    "VLLM_ENABLE_V1_MULTIPROCESSING=0 or use rollout_engine: hf"
                ) from None
        runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()

    def generate(self, prompts: list[Prompt], *, n: int = 1, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, do_sample: bool = True, seed: int | None = None,
                 return_logprobs: bool = False, batch_size: int = 16) -> list[Rollout]:
        del batch_size  # vLLM schedules its own batches
        greedy = (not do_sample) or temperature <= 0
        params = self._vllm.SamplingParams(
            n=n,
            temperature=0.0 if greedy else float(temperature),
            top_p=1.0 if greedy else float(top_p),
            top_k=-1,
            max_tokens=int(max_new_tokens),
            seed=seed,
            logprobs=0 if return_logprobs else None,
            stop_token_ids=self.eos_ids or None,
            logit_bias={t: -100.0 for t in self.suppress_token_ids} or None,
            skip_special_tokens=True,
        )
        texts = prompt_texts(self.processor, prompts)
        requests = []
        for text, p in zip(texts, prompts):
            req: dict[str, Any] = {"prompt": text}
            if p.images:
                req["multi_modal_data"] = {"image": list(p.images)}
            requests.append(req)
        results = self.llm.generate(requests, params, use_tqdm=False)
        tok = self.processor.tokenizer
        out: list[Rollout] = []
        for i, res in enumerate(results):
            for comp in res.outputs:
                ids = list(comp.token_ids)
                lps = None
                if return_logprobs:
                    lps = [float(d[t].logprob) for t, d in zip(ids, comp.logprobs or [])]
                reason = "stop" if comp.finish_reason == "stop" else "length"
                out.append(Rollout(prompt_index=i, token_ids=ids, text=tok.decode(ids, skip_special_tokens=True),
                                   logprobs=lps, finish_reason=reason))
        return out

    def close(self) -> None:
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
