"""Scorers of token sequences for the ``logprobs`` stage (``Engine.scorer``): the seam, and the hf scorer.

A scorer takes already-tokenized sequences (prompt + completion ids, from
``tokenize.encode_pair``) and the index where each completion starts, and
returns per sequence the summed log-prob of the completion tokens, their count
and, when asked, the per-token values. Tokenization, caching, sharding and
writing stay in the stage, so a scorer is only "a model that scores tokens".

``HFEngine`` (the hf engine's) loads ``AutoModelForCausalLM`` and scores with
``pipeline.model.scoring.score_tokens``, the trainer's own scoring path (length-bucketed batches
of at most ``batch_tokens`` padded tokens; log-probs from the hidden states, no full logits).
The vllm engine's (``vllm_logprobs``) implements the same ``score`` with
``SamplingParams(prompt_logprobs=0)`` on the full sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from prefpool.pipeline.model.device import resolve_device
from prefpool.pipeline.model.scoring import score_tokens
from prefpool.pipeline.model.source import ModelSource, resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Scores:
    """One entry per input sequence, in input order."""

    logps: list[float]  # sum over completion tokens of log p(token | prefix)
    counts: list[int]  # completion tokens scored
    token_logps: list[list[float]] | None  # per completion token, when asked for


class TokenScorer(Protocol):
    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, per_token: bool) -> Scores:
        """``sequences[i][starts[i]:]`` are the completion tokens to score (``starts[i] >= 1``)."""
        ...


class HFEngine:
    """``transformers`` causal LM on ``device`` (``"auto"``: the GPU when there is one, else the CPU)."""

    def __init__(
        self, model: str | ModelSource, *, dtype: str, batch_tokens: int, pad_token_id: int, device: str = "auto"
    ) -> None:
        self.device = torch.device(resolve_device(device))
        self.model = resolve_model(model).causal_lm(DTYPES[dtype]).to(self.device).eval()
        self.batch_tokens = batch_tokens
        self.pad_token_id = pad_token_id

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, per_token: bool) -> Scores:
        pairs = [(seq[:start], seq[start:]) for seq, start in zip(sequences, starts, strict=True)]
        sums, tokens = score_tokens(self.model, pairs, self.pad_token_id, max_tokens=self.batch_tokens)
        return Scores(
            sums.double().tolist(),
            [len(t) for t in tokens],
            [t.double().tolist() for t in tokens] if per_token else None,
        )
