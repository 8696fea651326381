"""The training tables ``build`` writes, one spec per kind: ``pairwise``, ``mcpo``, ``mpo``, ``kto``.

Each kind's module declares its ``TableKind`` (``spec``): schema, row decoder,
the losses that train on it. ``KINDS`` is the registry that ``build``, the
trainer (``prefpool.train.kinds``), ``eval`` and the TRL plug-ins read.

Also here: ``inputs`` (checked lazy scans of build's inputs, fingerprints, the
reference log-prob lookup), ``select`` (which answers of an ``examples`` row
are preferred) and ``mismatched`` (KTO's mismatched pairs, which ``logprobs``
scores and ``build --kind kto`` joins).
"""

from __future__ import annotations

from prefpool.pipeline.io.errors import PipelineConfigError

from . import kto, mcpo, mpo, pairwise
from .spec import Answer, TableKind, TableRow

KINDS: dict[str, TableKind] = {k.name: k for k in (pairwise.KIND, mcpo.KIND, mpo.KIND, kto.KIND)}


def get_kind(name: str) -> TableKind:
    """The spec of table kind ``name``; an unknown name is a ``PipelineConfigError`` listing the kinds."""
    try:
        return KINDS[name]
    except KeyError:
        raise PipelineConfigError(f"unknown table kind {name!r}; choose one of {', '.join(KINDS)}") from None


def kind_for_loss(loss: str) -> str | None:
    """The table kind a loss trains on (None for an unknown loss)."""
    return next((k.name for k in KINDS.values() if loss in k.losses), None)


__all__ = ["KINDS", "Answer", "TableKind", "TableRow", "get_kind", "kind_for_loss"]
