"""``mcpo``: one row per prompt, the preferred answer y0 and its candidate pool (parallel lists).

The preferred answer y0 comes with its reference log-prob and token count, the
pool as parallel lists in pool order. ``preferred`` picks y0: ``"ranked"``, the
best answer by ``rank_by`` (a row with no answer ranked by it is dropped and
counted: ``dropped_no_ranked_answer``); ``"chosen"``, the chosen answer of the
row's first pair (plain prompt/chosen/rejected data; a SPIN-like table when the
pool is generated; a row without pairs is dropped: ``dropped_no_pair``);
``"auto"`` (default), the ranked best where the row has a ranked answer, else
its first pair's chosen answer (counted: ``preferred_from_pair``; a row with
neither is dropped: ``dropped_no_ranked_answer_or_pair``). Without
``candidates`` the pool is the row's answers strictly worse than a ranked y0,
in answer order, or the rejected answers of the pairs whose chosen answer is
y0; with ``candidates`` it is the generated samples in sample order, minus any
sample whose text is the preferred text (duplicate samples are kept: they are
draws).

Scores: when the build ranks by a score (``--scores``, or ``--rank-by score``
on scored answers), ``preferred_score`` and ``pool_scores`` hold the score of
y0 and of each pool member, the key the build ranked by (higher is better;
after ``--length-penalty`` and a ``penalize``\\d truncation); InfoNCA's soft
targets are made of them. A row whose answers are not all scored (an unranked
pool of generated samples, ranks instead of scores, a pair's answer without a
score) has both null, and so has every row of a table ranked by rank or built
before these columns existed.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefpool.losses import losses_for_kind
from prefpool.pipeline.io.schemas import MESSAGE, optional_field

from . import select as sel
from .build_context import BuildContext, candidates_long
from .spec import TRL_PAIR_FIELDS, Answer, TableKind, TableRow, trl_pair

SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE), nullable=False),
        pa.field("preferred", pa.string(), nullable=False),
        pa.field("preferred_id", pa.string(), nullable=False),
        pa.field("ref_preferred_logp", pa.float64(), nullable=False),
        pa.field("preferred_num_tokens", pa.int32(), nullable=False),
        pa.field("pool", pa.list_(pa.string()), nullable=False),
        pa.field("pool_ids", pa.list_(pa.string()), nullable=False),
        pa.field("ref_pool_logps", pa.list_(pa.float64()), nullable=False),
        pa.field("pool_num_tokens", pa.list_(pa.int32()), nullable=False),
        # the scores the build ranked by, null where the row's answers are not all scored
        optional_field("preferred_score", pa.float64()),
        optional_field("pool_scores", pa.list_(pa.float64())),
    ]
)

SCORED_BY = (
    "build --kind mcpo ranking by a score: --scores (a `prefpool score` output) or --rank-by score (the "
    "examples' own scores)"
)


def decode(row: dict) -> TableRow:
    preferred = Answer("preferred", row["preferred"], row["ref_preferred_logp"], row["preferred_num_tokens"])
    pool = [
        Answer("pool", text, logp, tokens)
        for text, logp, tokens in zip(row["pool"], row["ref_pool_logps"], row["pool_num_tokens"], strict=True)
    ]
    preferred_score, pool_scores = row.get("preferred_score"), row.get("pool_scores")
    scores = None
    if preferred_score is not None and pool_scores is not None:
        scores = (preferred_score, *pool_scores)
        if len(pool_scores) != len(pool):
            pid = row["prompt_id"]
            raise ValueError(f"prompt_id {pid}: pool_scores has {len(pool_scores)} values, the pool {len(pool)}")
    return TableRow(row["prompt_id"], row["prompt"], (preferred, *pool), scores=scores)


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


def preferred_and_below(ctx: BuildContext) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """y0 of each row, ``[prompt_id, idx]``, and the dataset answers below it, ``[prompt_id, pos, text, cid, key]``.

    See ``preferred`` in the module docstring: ranked rows take their best answer (the answers ranked strictly
    below it form their pool), paired rows their first pair's chosen answer (its pairs' rejected answers).
    """
    mode = ctx.config.preferred
    ranked_rows = ctx.answers.filter(pl.col("key").is_not_null()).select("prompt_id").unique()
    paired = ctx.examples.filter(pl.col("pairs").list.len() > 0)
    picks, below = [], []
    if mode in ("ranked", "auto"):
        best = ctx.best()
        picks.append(best.select("prompt_id", "idx"))
        long = ctx.answers.join(best.select("prompt_id", pl.col("key").alias("best_key")), on="prompt_id")
        below.append(long.filter(pl.col("key") > pl.col("best_key")).select("prompt_id", "idx"))
    if mode in ("chosen", "auto"):
        if mode == "auto":
            paired = paired.join(ranked_rows, on="prompt_id", how="anti")
        first = paired.select(
            "prompt_id", pl.col("pairs").list.first().struct.field("chosen").cast(pl.Int32).alias("idx")
        )
        if mode == "auto":
            ctx.add("preferred_from_pair", first.select(pl.len()).collect().item())
        rejected = (
            sel.explicit_pairs(paired)
            .join(first, on="prompt_id")
            .filter(pl.col("chosen_idx") == pl.col("idx"))
            .select("prompt_id", pl.col("rejected_idx").cast(pl.Int32).alias("idx"))
            .unique()
        )
        picks.append(first)
        below.append(rejected)
    have = {"ranked": [ranked_rows], "chosen": [paired], "auto": [ranked_rows, paired]}[mode]
    unpicked = ctx.examples.select("prompt_id").join(
        pl.concat([frame.select("prompt_id") for frame in have]), on="prompt_id", how="anti"
    )
    reason = {"ranked": "no_ranked_answer", "chosen": "no_pair", "auto": "no_ranked_answer_or_pair"}[mode]
    ctx.add(f"dropped_{reason}", unpicked.select(pl.len()).collect().item())
    y0 = pl.concat(picks)
    answers = ctx.answers.select("prompt_id", "idx", "text", "cid", "key")
    pool = (
        pl.concat(below)
        .join(answers, on=["prompt_id", "idx"])
        .select("prompt_id", pl.col("idx").alias("pos"), "text", "cid", "key")
    )
    return y0, pool


def plan(ctx: BuildContext, candidates: pl.LazyFrame | None) -> pl.LazyFrame:
    """y0 and its pool for every row that has both, with reference log-probs (and scores, see above)."""
    best, below = preferred_and_below(ctx)
    rows = ctx.with_logp(ctx.answer(best.rename({"idx": "best_idx"}), "best_idx", "pref_"), "pref_cid", "pref_")
    keys = ctx.answers.select("prompt_id", pl.col("idx").alias("best_idx"), pl.col("key").alias("pref_key"))
    rows = rows.join(keys, on=["prompt_id", "best_idx"], how="left")
    rows = ctx.resolve_missing(rows, {"preferred": ("pref_text", "pref_logp")})
    # The dataset's answers (or samples ranked by a scores table): the pool is what ranks strictly below
    # y0 (answers tied for best are never negatives), or its pairs' rejected answers. Unranked samples
    # (a pool from `generate`, the preferred answer from the dataset): the pool is every sample.
    if candidates is None or ctx.config.scores == "candidates":
        long = below
    else:
        # an unranked pool of generated samples: cleaned here; scored samples were cleaned as answers
        long = candidates_long(candidates)
        ctx.add(
            "candidate_prompts_without_example",
            long.select("prompt_id")
            .unique()
            .join(ctx.examples, on="prompt_id", how="anti")
            .select(pl.len())
            .collect()
            .item(),
        )
        long = ctx.clean(long.join(ctx.examples.select("prompt_id"), on="prompt_id", how="semi"), "samples", "pos")
        rows = rows.join(ctx.examples.select("prompt_id"), on="prompt_id", how="semi")
        long = long.with_columns(pl.lit(None, dtype=pl.Float64).alias("key"))  # unranked
    long = long.join(rows.select("prompt_id", "pref_cid"), on="prompt_id", how="inner")
    ctx.add(
        "pool_samples_equal_to_preferred",
        long.filter(pl.col("cid") == pl.col("pref_cid")).select(pl.len()).collect().item(),
    )
    long = long.filter(pl.col("cid") != pl.col("pref_cid")).drop("pref_cid")
    scored = ctx.config.rank_by == "score"  # else the keys are ranks
    long = long.with_columns((-pl.col("key") if scored else pl.lit(None, dtype=pl.Float64)).alias("score"))
    rows = ctx.attach_pool(rows, ctx.pool(long, "pool", scores=True), "pool")
    every_answer_scored = pl.col("pref_key").is_not_null() & (
        pl.col("scores").list.drop_nulls().list.len() == pl.col("scores").list.len()
    )
    scores = pl.when(pl.lit(scored) & every_answer_scored)
    return ctx.prompts(rows).select(
        "prompt_id",
        "prompt",
        pl.col("pref_text").alias("preferred"),
        pl.col("pref_cid").alias("preferred_id"),
        pl.col("pref_logp").alias("ref_preferred_logp"),
        pl.col("pref_num_tokens").alias("preferred_num_tokens"),
        pl.col("texts").alias("pool"),
        pl.col("ids").alias("pool_ids"),
        pl.col("logps").alias("ref_pool_logps"),
        pl.col("ntoks").alias("pool_num_tokens"),
        scores.then(-pl.col("pref_key")).alias("preferred_score"),
        scores.then(pl.col("scores")).alias("pool_scores"),
        pl.lit(0).alias("_k1"),
        pl.lit(0).alias("_k2"),
    )


KIND = TableKind(
    name="mcpo",
    schema=SCHEMA,
    decode=decode,
    plan=plan,
    losses=losses_for_kind("mcpo"),
    summary="one row per prompt: the preferred answer and a pool of candidates, with cached reference log-probs",
    needs="per prompt a preferred answer (--preferred) and a pool: --candidates from `prefpool generate`, else the "
    "answers ranked below it or its pairs' rejected answers.",
    candidates="the pool",
    ranks_samples=True,
    optional_columns={"preferred_score": SCORED_BY, "pool_scores": SCORED_BY},
    trl_schema=TRL_SCHEMA,
    to_trl=to_trl,
)
