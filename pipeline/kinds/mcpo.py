"""``mcpo``: one row per prompt, the preferred answer and its candidate pool (parallel lists)."""

from __future__ import annotations

from prefpool.pipeline.io.schemas import MCPO

from .spec import Answer, TableKind, TableRow


def decode(row: dict) -> TableRow:
    preferred = Answer("preferred", row["preferred"], row["ref_preferred_logp"], row["preferred_num_tokens"])
    pool = [
        Answer("pool", text, logp, tokens)
        for text, logp, tokens in zip(row["pool"], row["ref_pool_logps"], row["pool_num_tokens"], strict=True)
    ]
    return TableRow(row["prompt_id"], row["prompt"], (preferred, *pool))


KIND = TableKind(
    name="mcpo",
    schema=MCPO,
    decode=decode,
    losses=("mcpo",),
    summary="one row per prompt: the preferred answer and a pool of candidates, with cached reference log-probs",
)
