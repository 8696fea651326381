"""``kto``: the ``pairwise`` rows plus KTO's mismatched pair, for ``prefpool train --loss kto_pair``.

Each row carries ``kl_completion``, another prompt's answer (the rule:
``mismatched``), with ``ref_kl_logps``, its reference log-prob under this row's
prompt, and ``kl_num_tokens``. The trainer scores the same pair with the policy;
KTO's reference point is the mean of the two's difference over a micro-batch.
The values come from ``prefpool logprobs --kl-pairs`` over the examples.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefpool.losses import losses_for_kind
from prefpool.pipeline.io.errors import PipelineInputError

from . import pairwise
from .build_context import BuildContext
from .inputs import with_completion_id
from .mismatched import mismatched_completions
from .spec import TRL_PAIR_FIELDS, Answer, TableKind, TableRow, trl_pair

SCHEMA = pa.schema(
    pairwise.PAIR_FIELDS
    + [
        pa.field("kl_completion", pa.string(), nullable=False),
        pa.field("kl_completion_id", pa.string(), nullable=False),  # ids.completion_id(text)
        pa.field("ref_kl_logps", pa.float64(), nullable=False),
        pa.field("kl_num_tokens", pa.int32(), nullable=False),
    ]
)

MADE_BY = "`prefpool logprobs --kl-pairs` over the examples, then `prefpool build --kind kto` with its output"


def decode(row: dict) -> TableRow:
    mismatched = Answer("mismatched", row["kl_completion"], row["ref_kl_logps"], row["kl_num_tokens"])
    return TableRow(row["prompt_id"], row["prompt"], pairwise.pair_answers(row), mismatched=mismatched)


def to_trl(row: TableRow) -> dict:
    assert row.mismatched is not None
    kl = row.mismatched
    return {**trl_pair(row), "kl_completion": kl.text, "ref_kl_logps": kl.ref_logp, "kl_num_tokens": kl.num_tokens}


def plan(ctx: BuildContext, candidates: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """The ``pairwise`` plan's rows, each with its prompt's mismatched completion and that completion's
    reference log-prob under the row's prompt. The rule reads the whole examples table
    (``ctx.all_examples``), so a ``--shard i/N`` build pairs a prompt as an unsharded one does."""
    pairs = pairwise.plan(ctx)
    kl = with_completion_id(mismatched_completions(ctx.all_examples), "kl_text", "kl_cid")
    if kl.select(pl.len()).collect().item() == 0:
        raise PipelineInputError(
            "build --kind kto: fewer than two prompts have a non-blank answer, so no prompt can be paired "
            "with another prompt's answer (KTO's reference point needs such pairs)",
            column="answers",
        )
    rows = ctx.with_logp(pairs.join(kl, on="prompt_id", how="inner"), "kl_cid", "kl_")
    rows = ctx.resolve_missing(
        rows,
        {"mismatched": ("kl_text", "kl_logp")},
        named="the mismatched completion",
        note="another prompt's answer",
        fix="run `prefpool logprobs --kl-pairs` over the examples and pass its output with --logprobs",
    )
    return rows.with_columns(
        pl.col("kl_text").alias("kl_completion"),
        pl.col("kl_cid").alias("kl_completion_id"),
        pl.col("kl_logp").alias("ref_kl_logps"),
        pl.col("kl_num_tokens"),
    )


TRL_SCHEMA = pa.schema(
    TRL_PAIR_FIELDS
    + [
        pa.field("kl_completion", pa.string(), nullable=False),
        pa.field("ref_kl_logps", pa.float64(), nullable=False),
        pa.field("kl_num_tokens", pa.int32(), nullable=False),
    ]
)

KIND = TableKind(
    name="kto",
    schema=SCHEMA,
    decode=decode,
    plan=plan,
    losses=losses_for_kind("kto"),
    summary="a pair plus a mismatched pair (this prompt, another prompt's answer), with cached reference log-probs",
    needs="pairs plus each prompt with another prompt's answer (KTO's mismatched pair, scored by `prefpool "
    "logprobs --kl-pairs`).",
    ranks_samples=True,
    made_of_pairs=True,
    trl_schema=TRL_SCHEMA,
    to_trl=to_trl,
    made_by=MADE_BY,
    no_row_hints={
        "dropped_missing_logp_mismatched": "no reference log-prob of the mismatched pairs: run `prefpool "
        "logprobs --kl-pairs` over the examples and pass its output with --logprobs",
    },
)
