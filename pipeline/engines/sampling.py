"""Per-sample seeds and the next-token distribution: pure functions, no model.

A sample's seed depends only on (global seed, prompt_id, sample index), so the
same sample is drawn however the prompts are sharded, batched or resumed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from prefpool.pipeline.io.errors import PipelineConfigError


def sample_seed(seed: int, prompt_id: str, index: int) -> int:
    """First 8 bytes of sha256("seed:prompt_id:index"), shifted to a non-negative int63."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class SamplingParams:
    """What every engine must honour. ``temperature == 0`` means greedy (argmax)."""

    temperature: float
    top_p: float
    max_new_tokens: int
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise PipelineConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PipelineConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise PipelineConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.eos_token_ids:
            raise PipelineConfigError("no eos token id: neither the tokenizer nor generation_config names one")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def next_token_probs(logits: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature then nucleus (top-p) filtering, in float32.

    Args:
        logits: ``(B, V)`` next-token logits, any float dtype.
        temperature: > 0.
        top_p: keep the smallest set of most likely tokens whose mass reaches
            ``top_p`` (the most likely token is always kept), renormalised.

    Returns:
        ``(B, V)`` float32 probabilities, each row summing to 1.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (B, V)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (B, V)
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)
