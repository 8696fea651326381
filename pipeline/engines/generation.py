"""The seam between the generate stage and an engine's generator (``Engine.generator``).

A generator gets prompt token ids, one seed per request and the sampling
parameters, and returns completion token ids. It must draw each request from its
own RNG stream seeded with ``Request.seed``, so a sample does not depend on what
else is in the batch (vLLM: ``SamplingParams(seed=request.seed)``; hf: one
``torch.Generator`` per row, see ``hf_generation``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prefpool.pipeline.engines.sampling import SamplingParams


@dataclass(frozen=True)
class Request:
    prompt_tokens: tuple[int, ...]
    seed: int


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]  # without the eos token that stopped it
    finish_reason: str  # "stop": an eos id was drawn; "length": max_new_tokens reached


class Generator(Protocol):
    def generate(
        self, requests: Sequence[Request], params: SamplingParams, *, on_done: Callable[[int], None]
    ) -> list[Completion]:
        """One completion per request, in request order; ``on_done(tokens)`` as requests finish."""
        ...
