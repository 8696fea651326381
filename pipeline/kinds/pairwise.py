"""``pairwise``: one row per preference pair, in the columns TRL's ``DPOTrainer`` reads."""

from __future__ import annotations

from prefpool.losses import losses_for_kind
from prefpool.pipeline.io.schemas import PAIRWISE

from .spec import Answer, TableKind, TableRow


def answer_text(turn: list[dict] | str) -> str:
    """The text of a TRL conversational completion (a one-message list), or a plain string."""
    return turn[0]["content"] if isinstance(turn, list) else turn


def pair_answers(row: dict) -> tuple[Answer, Answer]:
    """The chosen and rejected answers of a pairwise (or mpo) row."""
    return tuple(  # type: ignore[return-value]
        Answer(side, answer_text(row[side]), row[f"ref_{side}_logps"], row[f"{side}_num_tokens"])
        for side in ("chosen", "rejected")
    )


def decode(row: dict) -> TableRow:
    return TableRow(row["prompt_id"], row["prompt"], pair_answers(row))


KIND = TableKind(
    name="pairwise",
    schema=PAIRWISE,
    decode=decode,
    losses=losses_for_kind("pairwise"),
    summary="one row per (prompt, chosen, rejected) pair with cached reference log-probs",
)
