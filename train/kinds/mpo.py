"""Training on an ``mpo`` table: MPO (Jiang, Huang, Wei 2023, eq. 33) with its reference samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefpool.losses import mpo_loss
from prefpool.pipeline.kinds import get_kind

from . import pairwise
from .pairwise import PairBatch
from .spec import Example, KindLoss, StepOptions, TrainKind

TABLE = get_kind("mpo")


def collate(examples: Sequence[Example]) -> PairBatch:
    return pairwise.collate(examples, kind=TABLE.name)


def _sample_logps(logps: torch.Tensor, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The POLICY's log-probs of the reference samples, with gradient, as ``(B, K)`` plus its mask."""
    size = len(batch.chosen)
    width = max(len(row) for row in batch.samples)
    device = logps.device
    sample_logps = torch.zeros(size, width, dtype=logps.dtype, device=device)  # (B, K)
    sample_mask = torch.zeros(size, width, dtype=torch.bool, device=device)
    rows = torch.tensor([b for b, row in enumerate(batch.samples) for _ in row], device=device)
    cols = torch.tensor([k for row in batch.samples for k in range(len(row))], device=device)
    sample_logps = sample_logps.index_put((rows, cols), logps[2 * size :])
    sample_mask[rows, cols] = True
    return sample_logps, sample_mask


def loss(model, batch: PairBatch, cfg, options: StepOptions) -> KindLoss:
    size = len(batch.chosen)
    logps, counts = pairwise.pair_logps(model, batch, options)
    sample_logps = sample_mask = None
    if any(batch.samples):
        sample_logps, sample_mask = _sample_logps(logps, batch)
    device = logps.device
    out = mpo_loss(
        logps[:size],
        logps[size : 2 * size],
        batch.ref_chosen_logps.to(device),
        batch.ref_rejected_logps.to(device),
        preference=batch.label.to(device),
        ref_sample_logps=sample_logps,
        ref_sample_mask=sample_mask,
        chosen_tokens=counts[:size],
        rejected_tokens=counts[size : 2 * size],
        beta=cfg.settings.beta,
        tau=cfg.settings.tau,
        length_normalize=cfg.settings.length_normalize,
    )
    return out, logps[:size], counts[:size]


KIND = TrainKind(
    table=TABLE,
    collate=collate,
    loss=loss,
    cached=pairwise.cached,
    scored=pairwise.scored,
    ranking=pairwise.ranking,
    needs_samples=lambda cfg: cfg.tau > 0,
)
