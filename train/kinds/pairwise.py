"""Training on a ``pairwise`` table: every method of ``prefpool.losses`` whose kind is ``pairwise``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prefpool.losses import PairLogps, get_method
from prefpool.pipeline.kinds import get_kind
from prefpool.pipeline.model.scoring import TokenPair, completion_logps

from ..eval_ranking import pairwise_metrics
from .spec import Example, KindLoss, StepOptions, TrainKind

TABLE = get_kind("pairwise")


@dataclass(frozen=True)
class PairBatch:
    """``B`` pairs. Log-prob tensors are ``(B,)`` float64 (cached reference values)."""

    chosen: Sequence[TokenPair]
    rejected: Sequence[TokenPair]
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    label: torch.Tensor  # (B,)
    samples: Sequence[Sequence[TokenPair]]  # B lists (empty unless mpo with tau > 0)
    kind: str = TABLE.name


def collate(examples: Sequence[Example], kind: str = TABLE.name) -> PairBatch:
    return PairBatch(
        chosen=[e.answers[0] for e in examples],
        rejected=[e.answers[1] for e in examples],
        ref_chosen_logps=torch.tensor([e.ref_logps[0] for e in examples], dtype=torch.float64),
        ref_rejected_logps=torch.tensor([e.ref_logps[1] for e in examples], dtype=torch.float64),
        label=torch.tensor([e.label for e in examples], dtype=torch.float64),
        samples=[list(e.samples) for e in examples],
        kind=kind,
    )


def pair_logps(model, batch: PairBatch, options: StepOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen + rejected + the flattened samples: ``(logps (N,), counts (N,))``;
    chosen is ``[:B]``, rejected ``[B:2B]``, samples after."""
    flat_samples = [s for row in batch.samples for s in row]
    return completion_logps(
        model,
        [*batch.chosen, *batch.rejected, *flat_samples],
        options.pad_token_id,
        packing=options.packing,
        method=options.method,
    )


def loss(model, batch: PairBatch, cfg, options: StepOptions) -> KindLoss:
    """The method's step (``prefpool.losses.METHODS[cfg.loss].step``) on one forward's log-probs."""
    size = len(batch.chosen)
    logps, counts = pair_logps(model, batch, options)
    pair = PairLogps(
        chosen=logps[:size],  # (B,)
        rejected=logps[size : 2 * size],
        ref_chosen=batch.ref_chosen_logps.to(logps.device),
        ref_rejected=batch.ref_rejected_logps.to(logps.device),
        chosen_tokens=counts[:size],
        rejected_tokens=counts[size : 2 * size],
    )
    method = get_method(cfg.loss)
    state = options.method_state if options.method_state is not None else dict(method.initial_state)
    out, state = method.step(pair, cfg.settings, state)
    if options.method_state is not None:
        options.method_state.update(state)
    return out, pair.chosen, pair.chosen_tokens


def cached(batch: PairBatch) -> tuple[list[TokenPair], torch.Tensor]:
    return [*batch.chosen, *batch.rejected], torch.cat([batch.ref_chosen_logps, batch.ref_rejected_logps])


def scored(batch: PairBatch) -> list[TokenPair]:
    return [*batch.chosen, *batch.rejected, *(s for row in batch.samples for s in row)]


def ranking(ratios: Sequence[torch.Tensor], *, beta: float, tie_atol: float) -> dict:
    return pairwise_metrics(
        torch.stack([r[0] for r in ratios]), torch.stack([r[1] for r in ratios]), beta=beta, tie_atol=tie_atol
    )


KIND = TrainKind(table=TABLE, collate=collate, loss=loss, cached=cached, scored=scored, ranking=ranking)
