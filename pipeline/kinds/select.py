"""Which answers of an ``examples`` row are preferred: pairs and the best answer, in polars.

Everything here is lazy: rows are joined by ``prompt_id`` and answer index,
never by position in a file.

Order of answers. ``rank_by="rank"``: a lower ``rank`` is better (1 = best);
``rank_by="score"``: a higher ``score`` is better. An answer with no value for
that key takes part in no derived pair and is never the best or in a pool.

Tie policies (stated once here, referred to by the stage's docstring):

- Derived pairs never pair two answers with an equal key ("ties: skip").
- ``best_ties="first"``: when several answers share the best key, the one
  with the lowest index in ``answers`` is the best; ``best_ties="drop"``: the
  row is dropped from outputs that need a best answer, and counted. The other
  answers tied for best are neither chosen nor rejected nor in a pool.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.kinds.inputs import with_completion_id

RankBy = Literal["rank", "score"]
BestTies = Literal["first", "drop"]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PipelineConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def answers_long(examples: pl.LazyFrame, rank_by: RankBy) -> pl.LazyFrame:
    """``[prompt_id, idx, text, cid, key]``: one row per answer; ``key`` lower = better (null: unranked)."""
    check_choice("rank_by", rank_by, ("rank", "score"))
    key = pl.col("rank").cast(pl.Float64) if rank_by == "rank" else -pl.col("score")
    long = (
        examples.select("prompt_id", "answers", pl.int_ranges(pl.col("answers").list.len()).alias("idx"))
        .explode(["answers", "idx"])
        .filter(pl.col("idx").is_not_null())  # rows with no answers explode to one null row
        .unnest("answers")
        .select("prompt_id", pl.col("idx").cast(pl.Int32), "text", key.alias("key"))
    )
    return with_completion_id(long)


def best_answers(answers: pl.LazyFrame, best_ties: BestTies) -> pl.LazyFrame:
    """``[prompt_id, idx, key, ties]``: the best answer of each row, ``ties`` = answers sharing its key.

    With ``best_ties="drop"`` rows with ``ties > 1`` are removed (count them with ``ties``
    before calling, see ``count_best_ties``).
    """
    check_choice("best_ties", best_ties, ("first", "drop"))
    ranked = answers.filter(pl.col("key").is_not_null())
    best = (
        ranked.filter(pl.col("key") == pl.col("key").min().over("prompt_id"))
        .group_by("prompt_id")
        .agg(pl.col("idx").min(), pl.col("key").first(), pl.len().alias("ties"))
    )
    return best.filter(pl.col("ties") == 1) if best_ties == "drop" else best


def count_best_ties(answers: pl.LazyFrame) -> int:
    """Rows whose best key is shared by more than one answer."""
    ranked = answers.filter(pl.col("key").is_not_null())
    ties = ranked.filter(pl.col("key") == pl.col("key").min().over("prompt_id")).group_by("prompt_id").len()
    return int(ties.filter(pl.col("len") > 1).select(pl.len()).collect().item())


def explicit_pairs(examples: pl.LazyFrame) -> pl.LazyFrame:
    """``[prompt_id, chosen_idx, rejected_idx]`` from ``examples.pairs``."""
    return (
        examples.select("prompt_id", "pairs")
        .filter(pl.col("pairs").list.len() > 0)
        .explode("pairs")
        .unnest("pairs")
        .select("prompt_id", pl.col("chosen").alias("chosen_idx"), pl.col("rejected").alias("rejected_idx"))
    )
