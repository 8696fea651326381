"""Turn tokenized (prompt, completion) pairs into per-sequence policy log-probs.

A sequence here is a pair of token-id lists ``(prompt_ids, completion_ids)``
as made by the pipeline's shared tokenization, so the trainer scores exactly
the tokens whose reference log-probs were cached.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from prefpool.losses import sequence_logps

TokenPair = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, completion_ids)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside (dropout off, LoRA dropout included), back in its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def completion_logps(
    model: torch.nn.Module, pairs: Sequence[TokenPair], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each completion under ``model`` and its token count, ``(N,)`` each.

    One forward pass; gradient flows if it is enabled. Labels are shifted by
    rolling instead of slicing the logits (``logits[:, :-1]``), so the logits
    stay contiguous and autograd does not hold a second full-size gradient for
    the view.
    """
    device = next(model.parameters()).device
    batch = pad_pairs(pairs, pad_token_id, device)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits  # (N, T, V)
    # logits[:, t] predicts token t + 1: score input_ids[:, t + 1] where it is a completion token.
    labels = batch["input_ids"].roll(-1, dims=1)
    mask = batch["completion_mask"].roll(-1, dims=1)
    mask[:, -1] = False
    return sequence_logps(logits, labels, mask)


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[TokenPair],
    pad_token_id: int,
    *,
    max_tokens: int = 16384,
    lockstep: bool = False,
) -> torch.Tensor:
    """Log-probs of many sequences without gradient, ``(N,)`` float32, in input order.

    Sequences are sorted by length and packed into batches of at most
    ``max_tokens`` padded tokens, so little compute goes to padding.

    ``lockstep``: every process of the ``torch.distributed`` group runs as many forward passes as
    the process with the most batches (the extra ones on a two-token dummy, result dropped), and
    all processes must call this together. A sharded model (FSDP, DeepSpeed ZeRO-3) gathers its
    parameters collectively in each forward, so a process that ran fewer would wait forever.
    """
    lengths = [len(p) + len(c) for p, c in pairs]
    order = sorted(range(len(pairs)), key=lengths.__getitem__)
    batches = []
    start = 0
    while start < len(order):
        stop = start + 1
        # Sorted ascending, so the last row sets the padded width.
        while stop < len(order) and lengths[order[stop]] * (stop + 1 - start) <= max_tokens:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    extra = 0
    if lockstep:
        most = torch.tensor(len(batches), device=next(model.parameters()).device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        extra = int(most) - len(batches)
    out = torch.empty(len(pairs), dtype=torch.float32)
    for rows in batches:
        logps, _ = completion_logps(model, [pairs[i] for i in rows], pad_token_id)
        out[rows] = logps.float().cpu()
    for _ in range(extra):
        completion_logps(model, [((pad_token_id,), (pad_token_id,))], pad_token_id)
    return out
