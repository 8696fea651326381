"""Training on a ``pairwise`` table: DPO, IPO, SimPO on (chosen, rejected) pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prefpool.losses import LossOutput, dpo_loss, ipo_loss, simpo_loss
from prefpool.pipeline.kinds import pairwise as table
from prefpool.pipeline.model.scoring import TokenPair, completion_logps

from ..eval_ranking import pairwise_metrics
from .spec import Example, KindLoss, StepOptions, TrainKind


@dataclass(frozen=True)
class PairBatch:
    """``B`` pairs. Log-prob tensors are ``(B,)`` float64 (cached reference values)."""

    chosen: Sequence[TokenPair]
    rejected: Sequence[TokenPair]
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    label: torch.Tensor  # (B,)
    samples: Sequence[Sequence[TokenPair]]  # B lists (empty unless mpo with tau > 0)
    kind: str = "pairwise"


def collate(examples: Sequence[Example], kind: str = "pairwise") -> PairBatch:
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


# Each pairwise loss as a function of the batch's tensors and the config; no if-chain on the name.
_LOSSES: dict[str, Callable[..., LossOutput]] = {
    "dpo": lambda c, r, rc, rr, ct, rt, cfg: dpo_loss(c, r, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing),
    "ipo": lambda c, r, rc, rr, ct, rt, cfg: ipo_loss(c, r, rc, rr, beta=cfg.beta),
    "simpo": lambda c, r, rc, rr, ct, rt, cfg: simpo_loss(
        c, r, ct, rt, beta=cfg.beta, gamma=cfg.gamma, label_smoothing=cfg.label_smoothing
    ),
}


def loss(model, batch: PairBatch, cfg, options: StepOptions) -> KindLoss:
    size = len(batch.chosen)
    logps, counts = pair_logps(model, batch, options)
    chosen, rejected = logps[:size], logps[size : 2 * size]  # (B,)
    chosen_tokens, rejected_tokens = counts[:size], counts[size : 2 * size]
    ref_chosen = batch.ref_chosen_logps.to(logps.device)
    ref_rejected = batch.ref_rejected_logps.to(logps.device)
    out = _LOSSES[cfg.loss](chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, cfg)
    return out, chosen, chosen_tokens


def cached(batch: PairBatch) -> tuple[list[TokenPair], torch.Tensor]:
    return [*batch.chosen, *batch.rejected], torch.cat([batch.ref_chosen_logps, batch.ref_rejected_logps])


def scored(batch: PairBatch) -> list[TokenPair]:
    return [*batch.chosen, *batch.rejected, *(s for row in batch.samples for s in row)]


def ranking(ratios: Sequence[torch.Tensor], *, beta: float, tie_atol: float) -> dict:
    return pairwise_metrics(
        torch.stack([r[0] for r in ratios]), torch.stack([r[1] for r in ratios]), beta=beta, tie_atol=tie_atol
    )


KIND = TrainKind(table=table.KIND, collate=collate, loss=loss, cached=cached, scored=scored, ranking=ranking)
