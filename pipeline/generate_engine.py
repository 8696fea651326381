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

from prefpool.pipeline.errors import PipelineConfigError
from prefpool.pipeline.generate_model import ModelInfo
from prefpool.pipeline.sampling import SamplingParams


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


def _hf(info: ModelInfo, *, batch_size: int, device: str) -> Engine:
    from prefpool.pipeline.generate_hf import HFEngine

    return HFEngine(info, batch_size=batch_size, device=device)


def _vllm(info: ModelInfo, *, batch_size: int, device: str) -> Engine:
    # vLLM batches and places the model itself: batch_size and device are hf-engine settings
    from prefpool.pipeline.generate_vllm import VLLMEngine

    return VLLMEngine(info)


ENGINES: dict[str, Callable[..., Engine]] = {"hf": _hf, "vllm": _vllm}


def load_engine(name: str, info: ModelInfo, *, batch_size: int, device: str) -> Engine:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise PipelineConfigError(f"unknown engine {name!r}; known: {sorted(ENGINES)}") from None
    return factory(info, batch_size=batch_size, device=device)
