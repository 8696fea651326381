"""Engines that score token sequences for the ``logprobs`` stage: the seam a vLLM engine plugs into.

An engine takes already-tokenized sequences (prompt + completion ids, from
``tokenize.encode_pair``) and the index where each completion starts, and
returns per sequence the summed log-prob of the completion tokens, their count
and, when asked, the per-token values. Tokenization, caching, sharding and
writing stay in the stage, so an engine is only "a model that scores tokens".

``hf`` loads ``AutoModelForCausalLM`` and calls ``prefpool.losses.sequence_logps``
exactly as the trainer does. ``vllm`` (``logprobs_vllm``) implements the same
``score`` with ``SamplingParams(prompt_logprobs=0)`` on the full sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from prefpool.losses import sequence_logps
from prefpool.pipeline.model.device import resolve_device
from prefpool.pipeline.model.source import ModelSource, resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Scores:
    """One entry per input sequence, in input order."""

    logps: list[float]  # sum over completion tokens of log p(token | prefix)
    counts: list[int]  # completion tokens scored
    token_logps: list[list[float]] | None  # per completion token, when asked for


class Engine(Protocol):
    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, per_token: bool) -> Scores:
        """``sequences[i][starts[i]:]`` are the completion tokens to score (``starts[i] >= 1``)."""
        ...


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, shortest sequences first, each padded batch at most ``batch_tokens``.

    Sorting by length keeps padding small; a sequence longer than the budget
    gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending, so lengths[i] is the padded width of current + [i]
        if current and lengths[i] * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


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
        logps: list[float] = [0.0] * len(sequences)
        counts: list[int] = [0] * len(sequences)
        tokens: list[list[float]] | None = [[] for _ in sequences] if per_token else None
        for batch in plan_batches([len(s) for s in sequences], self.batch_tokens):
            sums, n, per = self._forward([sequences[i] for i in batch], [starts[i] for i in batch], per_token)
            for j, i in enumerate(batch):
                logps[i], counts[i] = sums[j], n[j]
                if tokens is not None:
                    tokens[i] = per[j]
        return Scores(logps, counts, tokens)

    @torch.inference_mode()
    def _forward(self, sequences, starts, per_token):
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros(len(sequences), width, dtype=torch.bool)
        completion = torch.zeros(len(sequences), width, dtype=torch.bool)
        for row, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = True
            completion[row, start : len(seq)] = True
        ids, attention, completion = ids.to(self.device), attention.to(self.device), completion.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=attention, use_cache=False).logits  # (B, T, V)
        # The trainer's call, shifted as sequence_logps' docstring says: logits[:, t] predicts ids[:, t + 1].
        sums, counts = sequence_logps(logits[:, :-1], ids[:, 1:], completion[:, 1:])  # (B,), (B,)
        per = None
        if per_token:
            per = _token_logps(logits, ids, completion, starts, [len(s) for s in sequences])
        return sums.double().tolist(), counts.tolist(), per


def _token_logps(logits, ids, completion, starts, lengths) -> list[list[float]]:
    """Per-token values: each position scored as a sequence of one, by the same function."""
    b, t, v = logits.shape
    labels = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)  # (B, T); the wrapped last column is masked out
    mask = torch.cat([completion[:, 1:], torch.zeros_like(completion[:, :1])], dim=1)
    flat, _ = sequence_logps(logits.reshape(b * t, 1, v), labels.reshape(b * t, 1), mask.reshape(b * t, 1))
    flat = flat.view(b, t).float().cpu()
    # logits[:, p] scores token p + 1: completion tokens start..len-1 are positions start-1..len-2
    return [
        flat[row, start - 1 : length - 1].tolist()
        for row, (start, length) in enumerate(zip(starts, lengths, strict=True))
    ]


def _vllm(model: str | ModelSource, **kwargs) -> Engine:
    from prefpool.pipeline.engines.vllm_logprobs import VLLMEngine  # imports vllm only when chosen

    return VLLMEngine(resolve_model(model).for_vllm(), **kwargs)


ENGINES: dict[str, Callable[..., Engine]] = {"hf": HFEngine, "vllm": _vllm}
