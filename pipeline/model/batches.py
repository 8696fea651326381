"""Tokenized (prompt, completion) pairs as model inputs: padded rows, one packed row, length-bucketed batches.

A pair is ``(prompt_ids, completion_ids)`` as ``tokenize.encode_pair`` makes it.
Every input carries ``completion_mask``: True at the completion's tokens, so
the scorer knows which positions' next-token log-probs to sum.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

TokenPair = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, completion_ids)


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def pad_pairs(
    pairs: Sequence[TokenPair], pad_token_id: int, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad ``N`` sequences into ``input_ids``, ``attention_mask``, ``completion_mask``, each ``(N, T)``."""
    width = max(len(p) + len(c) for p, c in pairs)
    input_ids = torch.full((len(pairs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(pairs), width, dtype=torch.long)
    completion_mask = torch.zeros(len(pairs), width, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(pairs):
        end = len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor([*prompt, *completion], dtype=torch.long)
        attention_mask[row, :end] = 1
        completion_mask[row, len(prompt) : end] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    return _to(batch, device)


def pack_pairs(pairs: Sequence[TokenPair], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """``N`` sequences end to end in one row, no padding: ``input_ids``, ``position_ids``, ``completion_mask``
    and ``sequence`` (which pair each token belongs to), each ``(1, S)``, ``S`` = all tokens.

    ``position_ids`` restart at 0 for every sequence: that is how transformers' attention tells packed
    sequences apart when no ``attention_mask`` is given (flash-attention's varlen kernels on CUDA; a
    block-diagonal mask for sdpa/eager, see ``scoring``)."""
    ids, positions, completion, sequence = [], [], [], []
    for row, (prompt, answer) in enumerate(pairs):
        length = len(prompt) + len(answer)
        ids += [*prompt, *answer]
        positions += range(length)
        completion += [False] * len(prompt) + [True] * len(answer)
        sequence += [row] * length
    batch = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "completion_mask": torch.tensor([completion], dtype=torch.bool),
        "sequence": torch.tensor([sequence], dtype=torch.long),
    }
    return _to(batch, device)


def plan_batches(
    widths: Sequence[int], max_tokens: int, *, key: Callable[[int], Hashable] | None = None
) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_tokens`` padded tokens (rows x widest row).

    Items are taken in the order of ``key`` (default: width, then index: shortest first, so rows of
    a batch have similar widths and little goes to padding) and a batch is closed when the next item
    would push it over the budget; an item wider than the budget gets a batch of its own. This is
    the one planner of every no-gradient scoring pass (the ``logprobs`` stage, MC-PO's pool pass,
    ``eval``); the shared-prompt pass orders by prompt first (``key``) so a prompt's answers meet.
    """
    order = sorted(range(len(widths)), key=key or (lambda i: (widths[i], i)))
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for i in order:
        wider = max(widest, widths[i])
        if current and wider * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, wider = [], widths[i]
        current.append(i)
        widest = wider
    if current:
        batches.append(current)
    return batches
