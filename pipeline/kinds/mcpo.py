"""``mcpo``: one row per prompt, the preferred answer and its candidate pool (parallel lists)."""

from __future__ import annotations

import pyarrow as pa

from prefpool.losses import losses_for_kind
from prefpool.pipeline.io.schemas import MCPO

from .spec import TRL_PAIR_FIELDS, Answer, TableKind, TableRow, trl_pair


def decode(row: dict) -> TableRow:
    preferred = Answer("preferred", row["preferred"], row["ref_preferred_logp"], row["preferred_num_tokens"])
    pool = [
        Answer("pool", text, logp, tokens)
        for text, logp, tokens in zip(row["pool"], row["ref_pool_logps"], row["pool_num_tokens"], strict=True)
    ]
    return TableRow(row["prompt_id"], row["prompt"], (preferred, *pool))


def to_trl(row: TableRow) -> dict:
    """TRL's columns (``rejected`` = the first pool member, TRL's tokenizer wants one) and the whole pool."""
    pool = row.answers[1:]
    return {
        **trl_pair(row),
        "pool": [a.text for a in pool],
        "ref_pool_logps": [a.ref_logp for a in pool],
        "pool_num_tokens": [a.num_tokens for a in pool],
    }


TRL_SCHEMA = pa.schema(
    TRL_PAIR_FIELDS
    + [
        pa.field("pool", pa.list_(pa.string()), nullable=False),
        pa.field("ref_pool_logps", pa.list_(pa.float64()), nullable=False),
        pa.field("pool_num_tokens", pa.list_(pa.int32()), nullable=False),
    ]
)

KIND = TableKind(
    name="mcpo",
    schema=MCPO,
    decode=decode,
    losses=losses_for_kind("mcpo"),
    summary="one row per prompt: the preferred answer and a pool of candidates, with cached reference log-probs",
    trl_schema=TRL_SCHEMA,
    to_trl=to_trl,
)
