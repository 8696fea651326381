"""Training on a ``kto`` table: KTO on pairs (Ethayarajh et al. 2024) with each row's mismatched pair.

A row's mismatched pair is its prompt with another prompt's answer, fixed when
the table was built (``pipeline/kinds/mismatched.py``), its reference log-prob
cached. The step scores chosen and rejected with gradient, the mismatched pairs
in a second forward without it (``kto_pair_loss`` detaches its reference point,
the mean of ``log pi - log pi_ref`` over the micro-batch's mismatched pairs), and
calls ``kto_pair_loss`` with the policy's and the cached values of all three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prefpool.losses import kto_pair_loss
from prefpool.pipeline.kinds import get_kind
from prefpool.pipeline.model.scoring import TokenPair, completion_logps

from . import pairwise
from .pairwise import PairBatch
from .spec import Example, KindLoss, StepOptions, TrainKind

TABLE = get_kind("kto")


@dataclass(frozen=True)
class KTOBatch(PairBatch):
    """``B`` pairs and their ``B`` mismatched pairs (each row's prompt with another prompt's answer)."""

    mismatched: Sequence[TokenPair] = ()
    ref_mismatched_logps: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))  # (B,)


def collate(examples: Sequence[Example]) -> KTOBatch:
    if any(e.mismatched is None for e in examples):
        raise ValueError("a kto batch needs each row's mismatched pair (Example.mismatched)")
    return KTOBatch(
        **vars(pairwise.collate(examples, kind=TABLE.name)),
        mismatched=[e.mismatched for e in examples],
        ref_mismatched_logps=torch.tensor([e.ref_mismatched_logp for e in examples], dtype=torch.float64),
    )


def loss(model, batch: KTOBatch, cfg, options: StepOptions) -> KindLoss:
    size = len(batch.chosen)
    logps, counts = completion_logps(
        model, [*batch.chosen, *batch.rejected], options.pad_token_id, packing=options.packing, method=options.method
    )
    with torch.no_grad():  # the reference point carries no gradient
        mismatched, _ = completion_logps(
            model, list(batch.mismatched), options.pad_token_id, packing=options.packing, method=options.method
        )
    device = logps.device
    out = kto_pair_loss(
        logps[:size],  # (B,)
        logps[size:],
        batch.ref_chosen_logps.to(device),
        batch.ref_rejected_logps.to(device),
        mismatched,
        batch.ref_mismatched_logps.to(device),
        **dataclasses.asdict(cfg.settings),
    )
    return out, logps[:size], counts[:size]


def cached(batch: KTOBatch) -> tuple[list[TokenPair], torch.Tensor]:
    pairs, ref = pairwise.cached(batch)
    return [*pairs, *batch.mismatched], torch.cat([ref, batch.ref_mismatched_logps])


def scored(batch: KTOBatch) -> list[TokenPair]:
    return [*batch.chosen, *batch.rejected, *batch.mismatched]


KIND = TrainKind(table=TABLE, collate=collate, loss=loss, cached=cached, scored=scored, ranking=pairwise.ranking)
