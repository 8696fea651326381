"""The seam between the generate stage and an inference engine.

An engine gets prompt token ids, one seed per request and the sampling
parameters, and returns completion token ids. It must draw each request from its
own RNG stream seeded with ``Request.seed``, so a sample does not depend on what
else is in the batch (vLLM: ``SamplingParams(seed=request.seed)``; hf: one
``torch.Generator`` per row, see ``generate_hf``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prefpool.pipeline.engines.sampling import SamplingParams
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.model.info import ModelInfo


@dataclass(frozen=True)
class Request:
    prompt_tokens: tuple[int, ...]
    seed: int


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]  # without the eos token that stopped it
    finish_reason: str  # "stop": an eos id was drawn; "length": max_new_tokens reached


class Engine(Protocol):
    name: str

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, *, on_done: Callable[[int], None]
    ) -> list[Completion]:
        """One completion per request, in request order; ``on_done(tokens)`` as requests finish."""
        ...


def _hf(info: ModelInfo, *, batch_size: int, device: str, options: dict) -> Engine:
    from prefpool.pipeline.engines.hf_generation import HFEngine

    if options:  # the stage refuses these first (engine_args.resolve_engine_args)
        raise PipelineConfigError(f"the hf engine takes no engine options, got {sorted(options)}")
    return HFEngine(info, batch_size=batch_size, device=device)


def _vllm(info: ModelInfo, *, batch_size: int, device: str, options: dict) -> Engine:
    # vLLM batches and places the model itself: batch_size and device are hf-engine settings
    from prefpool.pipeline.engines.vllm_generation import VLLMEngine

    return VLLMEngine(info, options=options)


ENGINES: dict[str, Callable[..., Engine]] = {"hf": _hf, "vllm": _vllm}


def load_engine(name: str, info: ModelInfo, *, batch_size: int, device: str, options: dict | None = None) -> Engine:
    """``options``: the engine's own settings (``vllm.LLM`` keyword arguments), already resolved."""
    check_engine(name)
    return ENGINES[name](info, batch_size=batch_size, device=device, options=dict(options or {}))


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise PipelineConfigError(f"unknown engine {name!r}; known: {sorted(ENGINES)}")
