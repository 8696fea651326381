"""``mpo``: a pair, its preference label, and answers sampled from the reference (MPO's tau term)."""

from __future__ import annotations

from prefpool.pipeline.io.schemas import MPO

from .pairwise import pair_answers
from .spec import TableKind, TableRow


def decode(row: dict) -> TableRow:
    return TableRow(
        row["prompt_id"], row["prompt"], pair_answers(row), label=row["label"], samples=tuple(row["ref_samples"])
    )


KIND = TableKind(
    name="mpo",
    schema=MPO,
    decode=decode,
    losses=("mpo",),
    summary="a pair with its preference label and i.i.d. samples from the reference, with cached log-probs",
)
