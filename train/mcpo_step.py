"""MC-PO's training step without a reference model, in two passes.

Pass 1 scores every pool answer under the current policy without gradient
(batched by length) and picks one negative per prompt with ``mcpo_select``.
Pass 2 runs forward/backward on the preferred answer and the picked negative
only. The loss and its gradient equal the one-pass computation that
back-propagates through all ``1 + M`` answers, because the selection kernels
send gradient through the picked answer alone; pass 2 costs what a DPO step
costs, and pass 1 costs ``M`` inference forwards, which are cheap.

The ``expectation`` kernel needs gradient through every candidate, so it runs
as one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prefpool.losses import LossOutput, mcpo_loss, mcpo_select
from prefpool.pipeline.model.scoring import TokenPair, completion_logps, score_pairs


@dataclass(frozen=True)
class PoolBatch:
    """``B`` prompts, each with its preferred answer and a (ragged) candidate pool.

    Attributes:
        chosen: ``B`` tokenized preferred answers.
        pools: ``B`` lists of tokenized candidates (at least one each).
        ref_chosen_logps: ``(B,)`` cached reference log-probs of ``chosen``.
        ref_pool_logps: ``(B, M)`` cached reference log-probs, padded to ``M``.
        pool_mask: ``(B, M)`` bool, True where ``pools[b]`` has an answer.
    """

    chosen: Sequence[TokenPair]
    pools: Sequence[Sequence[TokenPair]]
    ref_chosen_logps: torch.Tensor
    ref_pool_logps: torch.Tensor
    pool_mask: torch.Tensor


def _pool_slots(batch: PoolBatch) -> list[tuple[int, int]]:
    return [(b, i) for b, pool in enumerate(batch.pools) for i in range(len(pool))]


def mcpo_step_loss(
    model: torch.nn.Module,
    batch: PoolBatch,
    *,
    pad_token_id: int,
    beta: float,
    kernel: str = "sample",
    generator: torch.Generator | None = None,
    score_max_tokens: int = 16384,
    lockstep: bool = False,
) -> LossOutput:
    """Per-example MC-PO loss ``(B,)`` for one batch, ready for ``.backward()``.

    With a selection kernel (``sample``, ``max``, ``min``, ``uniform``) this
    runs the two passes above; with ``expectation``, one pass through the
    whole pool. Metrics are those of ``mcpo_loss`` over the whole pool.
    ``lockstep``: see ``score_pairs`` (all processes run pass 1 in as many forwards; for sharded models).
    """
    device = next(model.parameters()).device
    ref_chosen = batch.ref_chosen_logps.to(device)
    ref_pool = batch.ref_pool_logps.to(device)
    mask = batch.pool_mask.to(device)
    slots = _pool_slots(batch)
    rows = torch.tensor([b for b, _ in slots], device=device)
    cols = torch.tensor([i for _, i in slots], device=device)

    if kernel == "expectation":
        logps, _ = completion_logps(model, [*batch.chosen, *(batch.pools[b][i] for b, i in slots)], pad_token_id)
        size = len(batch.chosen)
        policy_pool = torch.zeros(mask.shape, dtype=logps.dtype, device=device)
        policy_pool = policy_pool.index_put((rows, cols), logps[size:])
        return mcpo_loss(logps[:size], policy_pool, ref_chosen, ref_pool, candidate_mask=mask, beta=beta, kernel=kernel)

    # Pass 1: score the pool without gradient, pick the negatives.
    scores = score_pairs(
        model, [batch.pools[b][i] for b, i in slots], pad_token_id, max_tokens=score_max_tokens, lockstep=lockstep
    ).to(device)
    pool_scores = torch.zeros(mask.shape, dtype=torch.float32, device=device)
    pool_scores[rows, cols] = scores
    selected = mcpo_select(
        pool_scores, ref_pool, candidate_mask=mask, beta=beta, kernel=kernel, generator=generator
    )  # (B,)

    # Pass 2: forward/backward through the preferred and the picked answers only.
    picked = [batch.pools[b][int(i)] for b, i in enumerate(selected.tolist())]
    logps, _ = completion_logps(model, [*batch.chosen, *picked], pad_token_id)
    size = len(batch.chosen)
    picked_slot = torch.nn.functional.one_hot(selected, mask.shape[1]).bool()
    # The picked entries carry gradient; the rest are pass-1 scores (values for the metrics).
    policy_pool = torch.where(picked_slot, logps[size:, None], pool_scores.to(logps.dtype))
    return mcpo_loss(
        logps[:size],
        policy_pool,
        ref_chosen,
        ref_pool,
        candidate_mask=mask,
        beta=beta,
        kernel=kernel,
        selected=selected,
    )
