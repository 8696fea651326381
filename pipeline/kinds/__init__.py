"""The training tables ``build`` writes, one spec per kind: ``pairwise``, ``mcpo``, ``mpo``, ``kto``.

Each kind's module declares its ``TableKind`` (``spec``), the one place a kind
is defined: its schema, row decoder, build plan (``plan``, on a
``build_context.BuildContext``), the facts build checks (which inputs it
needs), the losses that train on it and its TRL view. ``KINDS`` is the
registry that ``build`` (its ``--kind`` choices), ``prefpool run``, the schema
lookup (``io.schemas.get_schema``), the trainer (``prefpool.train.kinds``),
``eval`` and the TRL plug-ins read. A new kind is a module here with its
``KIND``, added to ``KINDS``.

Also here: ``inputs`` (checked lazy scans of build's inputs, fingerprints, the
reference log-prob lookup), ``select`` (which answers of an ``examples`` row
are preferred), ``pair_rules``, ``hygiene`` and ``ensemble`` (build's policies), and
``mismatched`` (KTO's mismatched pairs, which ``logprobs --kl-pairs`` scores and
``build --kind kto`` joins).
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
