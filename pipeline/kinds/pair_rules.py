"""Pairs derived from ranked answers (``pairwise`` and ``mpo`` tables): the common rules, in polars.

A row with explicit ``pairs`` keeps them; every other row gets derived pairs.
An answer's ``key`` is lower-is-better (``-score``, or the rank); two answers
with an equal key are never paired, and a pair needs the rejected key to
exceed the chosen one by at least ``min_margin`` (in score units, or ranks;
0 = any strict difference). ``pair_mode``:

- ``best-vs-rest``: the best answer against each strictly worse one (one pair per worse answer).
- ``best-vs-worst``: the best against the worst (SimPO's on-policy data); a tie for worst takes the lowest index.
- ``best-vs-random``: the best against one worse answer drawn at random (as UltraFeedback binarized was made
  for Zephyr); the draw is the smallest sha256 of ``(pair_seed, prompt_id, completion_id)``, so it depends on
  neither row order nor sharding.
- ``all``: every two answers whose keys differ by at least the margin, the better one chosen.

The best answer and its ties follow ``best_ties`` (``select.best_answers``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

import polars as pl

from prefpool.pipeline.kinds.select import BestTies, best_answers, check_choice

PairMode = Literal["best-vs-rest", "best-vs-worst", "best-vs-random", "all"]
PAIR_MODES: tuple[str, ...] = ("best-vs-rest", "best-vs-worst", "best-vs-random", "all")


def _draw(seed: int) -> Callable[[pl.Series], pl.Series]:
    def draw(keys: pl.Series) -> pl.Series:
        return pl.Series([hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in keys], dtype=pl.String)

    return draw


def derived_pairs(
    examples: pl.LazyFrame,
    answers: pl.LazyFrame,
    mode: PairMode,
    best_ties: BestTies,
    *,
    min_margin: float = 0.0,
    pair_seed: int = 0,
    count: Callable[[str, int], None] | None = None,
) -> pl.LazyFrame:
    """``[prompt_id, chosen_idx, rejected_idx]`` for the rows without explicit ``pairs`` (see the module docstring).

    ``count("pairs_below_margin", n)`` receives the strictly ordered candidate pairs the margin removed.
    """
    check_choice("pair_mode", mode, PAIR_MODES)
    unpaired = examples.filter(pl.col("pairs").list.len() == 0).select("prompt_id")
    ranked = answers.join(unpaired, on="prompt_id", how="semi").filter(pl.col("key").is_not_null())
    ranked = ranked.select("prompt_id", "idx", "cid", "key")
    chosen = ranked if mode == "all" else best_answers(ranked, best_ties)
    chosen = chosen.select("prompt_id", "idx", "key")  # the rejected answer's cid keeps its name
    ordered = chosen.join(ranked, on="prompt_id", suffix="_r").filter(pl.col("key") < pl.col("key_r"))
    if min_margin > 0:
        short = pl.col("key_r") - pl.col("key") < min_margin
        if count is not None:
            count("pairs_below_margin", int(ordered.filter(short).select(pl.len()).collect().item()))
        ordered = ordered.filter(~short)
    if mode == "best-vs-worst":
        worst = pl.col("key_r") == pl.col("key_r").max().over("prompt_id")
        ordered = ordered.filter(worst).filter(pl.col("idx_r") == pl.col("idx_r").min().over("prompt_id"))
    elif mode == "best-vs-random":
        draw = (pl.col("prompt_id") + ":" + pl.col("cid")).map_batches(_draw(pair_seed), return_dtype=pl.String)
        ordered = ordered.with_columns(draw.alias("_draw"))
        ordered = ordered.filter(pl.col("_draw") == pl.col("_draw").min().over("prompt_id"))
    return ordered.select("prompt_id", pl.col("idx").alias("chosen_idx"), pl.col("idx_r").alias("rejected_idx"))
