"""``mpo``: a pair, its preference label, and answers sampled from the reference (MPO's tau term)."""

from __future__ import annotations

import pyarrow as pa

from prefpool.losses import losses_for_kind
from prefpool.pipeline.io.schemas import MPO

from .pairwise import pair_answers
from .spec import TRL_PAIR_FIELDS, TableKind, TableRow, trl_pair


def decode(row: dict) -> TableRow:
    return TableRow(
        row["prompt_id"], row["prompt"], pair_answers(row), label=row["label"], samples=tuple(row["ref_samples"])
    )


def to_trl(row: TableRow) -> dict:
    return {**trl_pair(row), "label": row.label, "ref_samples": list(row.samples)}


TRL_SCHEMA = pa.schema(
    TRL_PAIR_FIELDS
    + [
        pa.field("label", pa.float64(), nullable=False),
        pa.field("ref_samples", pa.list_(pa.string()), nullable=False),
    ]
)

KIND = TableKind(
    name="mpo",
    schema=MPO,
    decode=decode,
    losses=losses_for_kind("mpo"),
    summary="a pair with its preference label and i.i.d. samples from the reference, with cached log-probs",
    trl_schema=TRL_SCHEMA,
    to_trl=to_trl,
)
