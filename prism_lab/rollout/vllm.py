"""Optional vLLM rollout engine (GPU only). Same output contract as :class:`prism_lab.rollout.HFGenerateEngine`.

vllm is not a dependency of prism-lab and is never imported at module import time; building the
engine without vllm raises :class:`prism_lab.errors.PrismError`. This module has NOT been run on
hardware from the CPU development environment (vllm is not installed there; the CPU tests use a
recording test double in its place): check it on a GPU machine (``benchmarks/gpu/check.py``) before
relying on it.

Two uses:
- a plain engine for evaluation and the warm-up's student rollouts (:func:`prism_lab.rollout.make_engine`);
- the colocated engine of the RL and alignment stages, one per rank (:meth:`VLLMEngine.colocated`,
  :func:`colocated_llm_kwargs`): vLLM's ``external_launcher`` joins the trainers' torchrun processes, sleep
  mode frees its GPU memory while the policy trains, and :mod:`prism_lab.rollout.colocate` drives it
  (``wake_up`` / ``load_weights`` / ``generate`` / ``sleep``). It is built once per run from the stage's INPUT
  checkpoint directory and gets the trained weights through ``load_weights`` (nothing is saved to build it).

Differences from the HF engine that callers must know:
- ``logprobs`` are vLLM's sampled-token log-probs (``SamplingParams(logprobs=0)``); depending on
  the vLLM version and ``logprobs_mode`` these are computed before or after temperature. The RL
  trainer therefore never uses them as PPO ``old_logp`` without checking them against its own
  forward pass (it recomputes when they disagree).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prism_lab.config.rollout import RolloutConfig
from prism_lab.errors import PrismError
from prism_lab.rollout.inputs import prompt_texts
from prism_lab.rollout.types import Prompt, Rollout

__all__ = ["VLLMEngine", "colocated_engine_args", "colocated_llm_kwargs", "llm_kwargs"]

#: vLLM seeds numpy, which takes seeds below 2**32.
_SEED_RANGE = 2**32


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
               dtype: str = "auto", seed: int = 0, colocated: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for a checkpoint directory (pure: vllm is not imported).

    ``max_model_len`` is required: vLLM's default is the model's whole context (see
    :mod:`prism_lab.rollout.model_len`). ``colocated``: the engine of one torchrun rank, sharing its GPU with
    the trainer: vLLM's ``external_launcher`` (the process and its process group are torchrun's, no workers of
    its own), one GPU per engine (tensor parallel 1) and sleep mode."""
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or max_model_len < 1:
        raise ValueError(f"max_model_len must be a positive integer, got {max_model_len!r}")
    kwargs: dict[str, Any] = dict(model=str(checkpoint_dir), gpu_memory_utilization=gpu_memory_utilization,
                                  dtype=dtype, seed=int(seed) % _SEED_RANGE, limit_mm_per_prompt={"image": 8},
                                  max_model_len=max_model_len)
    if colocated:
        kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1,
                      enable_sleep_mode=True)
    return kwargs


def colocated_engine_args(settings: RolloutConfig, *, rank: int) -> dict[str, Any]:
    """The engine settings of rank ``rank``'s colocated engine for a stage rolling out with ``settings``:
    ``max_model_len`` = prompt cap + response cap, the stage's memory share, bf16 weights, and a seed of its
    own per rank (each rank samples its own share of the prompts)."""
    return dict(max_model_len=settings.max_model_len, gpu_memory_utilization=settings.gpu_memory_utilization,
                dtype="bfloat16", seed=settings.seed_for("vllm/engine", rank), colocated=True)


def colocated_llm_kwargs(checkpoint_dir: str | Path, settings: RolloutConfig, *, rank: int) -> dict[str, Any]:
    """``vllm.LLM`` kwargs of rank ``rank``'s colocated engine (:func:`colocated_engine_args`)."""
    return llm_kwargs(checkpoint_dir, **colocated_engine_args(settings, rank=rank))


class VLLMEngine:
    """Rollouts with ``vllm.LLM`` built from a checkpoint directory (config + safetensors + processor)."""

    kind = "vllm"

    def __init__(self, checkpoint_dir: str | Path, processor, *, max_model_len: int,
                 gpu_memory_utilization: float = 0.6, dtype: str = "auto", seed: int = 0, colocated: bool = False,
                 suppress_token_ids: list[int] | None = None, eos_token_ids: list[int] | None = None,
                 _tmpdir: str | None = None) -> None:
        kwargs = llm_kwargs(checkpoint_dir, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                            dtype=dtype, seed=seed, colocated=colocated)
        vllm = _import_vllm()
        if colocated:  # the engine core in this process: load_weights reaches its model (vLLM V1)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._vllm = vllm
        self.max_model_len = max_model_len
        self.processor = processor
        self.checkpoint_dir = str(checkpoint_dir)
        self.suppress_token_ids = list(suppress_token_ids or [])
        self.eos_ids = list(eos_token_ids or [])
        self._tmpdir = _tmpdir
        self.llm = vllm.LLM(**kwargs)

    @classmethod
    def colocated(cls, checkpoint_dir: str | Path, processor, settings: RolloutConfig, *, rank: int, model) -> VLLMEngine:
        """Rank ``rank``'s colocated engine, built from the stage's input checkpoint (``model``: the policy, for
        its end-of-turn and vision placeholder ids; its weights are not read here)."""
        from prism_lab.rollout.inputs import eos_token_ids, vision_token_ids

        return cls(checkpoint_dir, processor, suppress_token_ids=vision_token_ids(model),
                   eos_token_ids=eos_token_ids(model, processor), **colocated_engine_args(settings, rank=rank))

    @classmethod
    def from_model(cls, model, processor, *, checkpoint_dir: str | Path | None = None, **kwargs: Any) -> VLLMEngine:
        """Engine for an in-memory ``model``: uses ``checkpoint_dir`` when given, else saves the model
        to a temporary directory (removed by :meth:`close`)."""
        from prism_lab.rollout.inputs import eos_token_ids, vision_token_ids

        tmp = None
        if checkpoint_dir is None:
            from prism_lab.models import save_policy

            if any(hasattr(p, "full_tensor") for p in model.parameters()):
                raise PrismError("a vLLM engine for a sharded model is built from its checkpoint directory "
                                 "(checkpoint_dir), not by saving the shards")
            tmp = tempfile.mkdtemp(prefix="prism_vllm_")
            save_policy(model, processor, tmp)
            checkpoint_dir = tmp
        return cls(checkpoint_dir, processor, suppress_token_ids=vision_token_ids(model),
                   eos_token_ids=eos_token_ids(model, processor), _tmpdir=tmp, **kwargs)

    def _model(self):
        """The ``nn.Module`` inside vLLM (the engine core runs in this process: external launcher or
        ``VLLM_ENABLE_V1_MULTIPROCESSING=0``); the path differs between vLLM versions, hence the explicit error."""
        executor = self.llm.llm_engine.model_executor
        for path in (("driver_worker", "worker", "model_runner", "model"), ("driver_worker", "model_runner", "model")):
            obj: Any = executor
            try:
                for attr in path:
                    obj = getattr(obj, attr)
            except AttributeError:
                continue
            return obj
        raise PrismError("cannot reach the vLLM model to update its weights in this vLLM version; run with "
                         "VLLM_ENABLE_V1_MULTIPROCESSING=0 or use rollout_engine: hf")

    def load_weights(self, weights: list[tuple[str, Any]]) -> None:
        """Load ``(checkpoint name, whole tensor)`` pairs into the engine's model (it maps the names itself)."""
        self._model().load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):  # cached prefixes were computed with the old weights
            self.llm.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """Free the GPU memory: level 1 keeps the weights in host memory, level 2 drops them (a sync restores them)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back the memory of ``tags`` (``weights``, ``kv_cache``; None: both)."""
        self.llm.wake_up(tags=tags)

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
