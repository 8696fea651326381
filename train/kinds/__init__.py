"""How to train on each table kind: one ``TrainKind`` per kind (``spec``), in a registry.

``pairwise`` (DPO, IPO, SimPO), ``mcpo`` (MC-PO's two-pass step), ``mpo``
(MPO with its reference samples), ``kto`` (KTO with each row's mismatched
pair). Each spec holds the pipeline's ``TableKind`` (schema, row decoder,
allowed losses) and the training side (batch, loss, step-0 sequences, eval
ranking). The trainer, ``eval`` and the
TRL plug-ins ask the spec; they never branch on the kind.
"""

from __future__ import annotations

from prefpool.pipeline.kinds import KINDS, get_kind

from . import kto, mcpo, mpo, pairwise
from .mcpo import PoolBatch
from .pairwise import PairBatch
from .spec import Example, KindLoss, StepOptions, TrainKind

TRAIN_KINDS: dict[str, TrainKind] = {k.name: k for k in (pairwise.KIND, mcpo.KIND, mpo.KIND, kto.KIND)}
assert set(TRAIN_KINDS) == set(KINDS), "every table kind has a training spec"


def train_kind(name: str) -> TrainKind:
    """The training spec of table kind ``name`` (an unknown name names the known kinds)."""
    return TRAIN_KINDS[get_kind(name).name]


__all__ = [
    "TRAIN_KINDS",
    "Example",
    "KindLoss",
    "PairBatch",
    "PoolBatch",
    "StepOptions",
    "TrainKind",
    "train_kind",
]
