"""Training on an ``mcpo`` table: MC-PO's step without a reference model, in two passes.

Pass 1 scores the candidates under the current policy without gradient and
with dropout off (``eval_mode``: the kernel must sample from the policy, not
from a dropout-perturbed copy of it), batched by length, and picks one answer
per prompt with ``mcpo_select``. A row's answers share its prompt, which pass 1
runs once and scores every answer against (``share_prompts``: its keys and
values are cached, ``pipeline.model.prompt_cache``), so pass 1 costs about the
answers' lengths, not ``M`` times prompt + answer. The paper's ``sample`` kernel (Chen et al.
2025, arXiv 2502.04567, Sec. 3) draws from the preferred answer *and* the
pool, so pass 1 scores the preferred answers too. Pass 2 runs forward/backward
on the preferred answers and the picked pool answers only; a row whose draw
was the preferred answer itself has the constant loss log 2 and no gradient,
so it costs no pool forward. The loss and its gradient equal the one-pass
computation that back-propagates through all ``1 + M`` answers, because the
selection kernels send gradient through the picked answer alone; pass 2
costs what a DPO step costs, pass 1 ``M`` (+1) inference forwards.

The averaging kernels (``listwise``, ``rao_blackwell``) need gradient through
every candidate, so they run as one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from prefpool.losses import (
    AVERAGING_KERNELS,
    CHOSEN_SUPPORT_KERNELS,
    LossOutput,
    mcpo_loss,
    mcpo_select,
)
from prefpool.pipeline.kinds import mcpo as table
from prefpool.pipeline.model.scoring import TokenPair, completion_logps, eval_mode, score_pairs

from ..eval_ranking import pool_metrics
from .spec import Example, KindLoss, StepOptions, TrainKind


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
    kind: ClassVar[str] = "mcpo"


def collate(examples: Sequence[Example]) -> PoolBatch:
    width = max(len(e.answers) - 1 for e in examples)
    ref_pool = torch.zeros(len(examples), width, dtype=torch.float64)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for b, e in enumerate(examples):
        m = len(e.answers) - 1
        ref_pool[b, :m] = torch.tensor(e.ref_logps[1:], dtype=torch.float64)
        mask[b, :m] = True
    return PoolBatch(
        chosen=[e.answers[0] for e in examples],
        pools=[list(e.answers[1:]) for e in examples],
        ref_chosen_logps=torch.tensor([e.ref_logps[0] for e in examples], dtype=torch.float64),
        ref_pool_logps=ref_pool,
        pool_mask=mask,
    )


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
    share_prompts: bool = True,
    packing: bool | None = None,
    method: str | None = None,
) -> LossOutput:
    """Per-example MC-PO loss ``(B,)`` for one batch, ready for ``.backward()``.

    With a selection kernel (``sample``, ``sample_pool``, ``max``, ``min``,
    ``uniform``) this runs the two passes above; with an averaging kernel, one
    pass through the whole pool. Metrics are those of ``mcpo_loss`` over the
    whole pool. ``lockstep``: see ``score_pairs`` (all processes run pass 1 in
    as many forwards; for sharded models). ``share_prompts``: pass 1 runs each
    prompt once (False: every answer as a full sequence; the same scores up to
    float rounding). ``packing``, ``method``: how the gradient pass scores
    (``scoring.completion_logps``).
    """
    device = next(model.parameters()).device
    ref_chosen = batch.ref_chosen_logps.to(device)
    ref_pool = batch.ref_pool_logps.to(device)
    mask = batch.pool_mask.to(device)
    size = len(batch.chosen)
    slots = _pool_slots(batch)
    rows = torch.tensor([b for b, _ in slots], device=device)
    cols = torch.tensor([i for _, i in slots], device=device)

    def with_grad(pairs):  # the gradient pass
        return completion_logps(model, pairs, pad_token_id, packing=packing, method=method)[0]

    if kernel in AVERAGING_KERNELS:
        logps = with_grad([*batch.chosen, *(batch.pools[b][i] for b, i in slots)])
        policy_pool = torch.zeros(mask.shape, dtype=logps.dtype, device=device)
        policy_pool = policy_pool.index_put((rows, cols), logps[size:])
        return mcpo_loss(logps[:size], policy_pool, ref_chosen, ref_pool, candidate_mask=mask, beta=beta, kernel=kernel)

    # Pass 1: score the candidates without gradient or dropout, pick one answer per row.
    with_chosen = kernel in CHOSEN_SUPPORT_KERNELS  # the paper's kernel can draw the preferred answer
    scored = [batch.pools[b][i] for b, i in slots] + (list(batch.chosen) if with_chosen else [])
    with eval_mode(model):
        scores = score_pairs(
            model,
            scored,
            pad_token_id,
            max_tokens=score_max_tokens,
            lockstep=lockstep,
            share_prompts=share_prompts,
            method=method,
        ).to(device)
    pool_scores = torch.zeros(mask.shape, dtype=torch.float32, device=device)
    pool_scores[rows, cols] = scores[: len(slots)]
    chosen_scores = scores[len(slots) :] if with_chosen else None
    selected = mcpo_select(
        pool_scores,
        ref_pool,
        policy_chosen_logps=chosen_scores,
        ref_chosen_logps=ref_chosen if with_chosen else None,
        candidate_mask=mask,
        beta=beta,
        kernel=kernel,
        generator=generator,
    )  # (B,), -1 where the preferred answer was drawn

    # Pass 2: forward/backward through the preferred answers and the picked pool answers only.
    picks = [(b, i) for b, i in enumerate(selected.tolist()) if i >= 0]
    logps = with_grad([*batch.chosen, *(batch.pools[b][i] for b, i in picks)])
    in_pool = selected >= 0
    picked_slot = torch.nn.functional.one_hot(selected.clamp(min=0), mask.shape[1]).bool() & in_pool[:, None]
    picked_logps = torch.zeros(size, dtype=logps.dtype, device=device)
    if picks:
        picked_logps = picked_logps.index_put((torch.tensor([b for b, _ in picks], device=device),), logps[size:])
    # The picked entries carry gradient; the rest are pass-1 scores (values for the metrics).
    policy_pool = torch.where(picked_slot, picked_logps[:, None], pool_scores.to(logps.dtype))
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


def loss(model, batch: PoolBatch, cfg, options: StepOptions) -> KindLoss:
    out = mcpo_step_loss(
        model,
        batch,
        pad_token_id=options.pad_token_id,
        beta=cfg.beta,
        kernel=cfg.kernel,
        generator=options.generator,
        score_max_tokens=cfg.score_max_tokens,
        lockstep=options.lockstep,
        packing=options.packing,
        method=options.method,
    )
    return out, None, None  # the preferred answers' log-probs stay inside the step


def cached(batch: PoolBatch) -> tuple[list[TokenPair], torch.Tensor]:
    pairs = [*batch.chosen, *(p for pool in batch.pools for p in pool)]
    return pairs, torch.cat([batch.ref_chosen_logps, batch.ref_pool_logps[batch.pool_mask]])


def scored(batch: PoolBatch) -> list[TokenPair]:
    return [*batch.chosen, *(p for pool in batch.pools for p in pool)]


def ranking(ratios: Sequence[torch.Tensor], *, beta: float, tie_atol: float) -> dict:
    return pool_metrics(torch.stack([r[0] for r in ratios]), [r[1:] for r in ratios], beta=beta, tie_atol=tie_atol)


KIND = TrainKind(table=table.KIND, collate=collate, loss=loss, cached=cached, scored=scored, ranking=ranking)
