"""``pairwise``: one row per preference pair, in the columns TRL 1.16's ``DPOTrainer`` reads.

``prompt`` (a list of messages, conversational), ``chosen`` and ``rejected``
(each a list with one ``{"role": "assistant", "content": ...}`` message), and
``ref_chosen_logps`` / ``ref_rejected_logps`` (float64; when present TRL uses
them instead of running the reference), plus ``prompt_id``,
``chosen_id``/``rejected_id`` (``ids.completion_id``) and token counts. Pairs
come from ``examples.pairs``; a row without pairs (ranked data) gets pairs
derived from ranks/scores (``pair_mode``, ``pair_rules.py``).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefpool.losses import losses_for_kind

from . import select as sel
from .build_context import BuildContext
from .pair_rules import derived_pairs
from .spec import TRL_PAIR_FIELDS, Answer, TableKind, TableRow

# TRL's pair columns (prompt .. ref_rejected_logps, then the token counts) with the answers' ids between them.
PAIR_FIELDS = [
    *TRL_PAIR_FIELDS[:6],
    pa.field("chosen_id", pa.string(), nullable=False),  # ids.completion_id(text)
    pa.field("rejected_id", pa.string(), nullable=False),
    *TRL_PAIR_FIELDS[6:],
]
SCHEMA = pa.schema(PAIR_FIELDS)


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


def plan(ctx: BuildContext, candidates: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """The pairs of every row (explicit, else derived), each with both answers' reference log-probs."""
    explicit = sel.explicit_pairs(ctx.examples)
    derived = derived_pairs(
        ctx.examples,
        ctx.answers,
        ctx.config.pair_mode,  # type: ignore[arg-type]
        ctx.config.best_ties,  # type: ignore[arg-type]
        min_margin=ctx.config.min_margin,
        pair_seed=ctx.config.pair_seed,
        count=ctx.add,
    )
    if ctx.config.pair_mode != "all" and ctx.config.best_ties == "drop":
        unpaired = ctx.answers.join(ctx.examples.filter(pl.col("pairs").list.len() == 0), on="prompt_id", how="semi")
        ctx.add("dropped_tie_for_best", sel.count_best_ties(unpaired))
    ctx.add("pairs_explicit", explicit.select(pl.len()).collect().item())
    ctx.add("pairs_derived", derived.select(pl.len()).collect().item())
    pairs = pl.concat([explicit, derived])
    pairs = ctx.answer(ctx.answer(pairs, "chosen_idx", "chosen_"), "rejected_idx", "rejected_")
    same = pl.col("chosen_cid") == pl.col("rejected_cid")
    ctx.add("pairs_identical_texts_dropped", pairs.filter(same).select(pl.len()).collect().item())
    pairs = pairs.filter(~same)
    pairs = ctx.with_logp(ctx.with_logp(pairs, "chosen_cid", "chosen_"), "rejected_cid", "rejected_")
    pairs = ctx.resolve_missing(
        pairs, {"chosen": ("chosen_text", "chosen_logp"), "rejected": ("rejected_text", "rejected_logp")}
    )

    def turn(text: str) -> pl.Expr:
        return pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col(text)))

    return ctx.prompts(pairs).select(
        "prompt_id",
        "prompt",
        turn("chosen_text").alias("chosen"),
        turn("rejected_text").alias("rejected"),
        pl.col("chosen_logp").alias("ref_chosen_logps"),
        pl.col("rejected_logp").alias("ref_rejected_logps"),
        pl.col("chosen_cid").alias("chosen_id"),
        pl.col("rejected_cid").alias("rejected_id"),
        "chosen_num_tokens",
        "rejected_num_tokens",
        # sort keys, dropped before writing
        pl.col("chosen_idx").alias("_k1"),
        pl.col("rejected_idx").alias("_k2"),
    )


KIND = TableKind(
    name="pairwise",
    schema=SCHEMA,
    decode=decode,
    plan=plan,
    losses=losses_for_kind("pairwise"),
    summary="one row per (prompt, chosen, rejected) pair with cached reference log-probs",
    needs="chosen/rejected pairs (explicit in the examples, else derived from ranks or scores: --rank-by score "
    "for scored answers such as UltraFeedback's).",
    ranks_samples=True,
    made_of_pairs=True,
)
