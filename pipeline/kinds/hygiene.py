"""Pool hygiene: which answers and samples may enter a training table, in polars, with a count per reason.

The rules, applied by ``build`` to the answers it ranks (the dataset's answers,
or generated samples ranked by a ``scores`` table) and to an unranked
``mcpo`` pool of generated samples. The reference samples of an ``mpo`` table
are left as drawn: the tau term needs i.i.d. draws.

- ``identical_pools="drop"`` (default): a prompt with two or more answers
  that all have the same text is dropped (SimPO drops such prompts: there is
  nothing to prefer); counted as ``dropped_identical_<role>``.
- ``empty="drop"`` (default): an answer whose text is empty or only
  whitespace leaves the pool; counted as ``<role>_empty_dropped``.
- ``truncated``: a sample cut at ``max_new_tokens`` (``finish_reason ==
  "length"`` in the ``candidates`` table; the dataset's answers are never
  truncated) is kept (``keep``, default), dropped (``drop``), or kept with
  ``truncated_penalty`` subtracted from its score (``penalize``; needs samples
  ranked by a scores table). Every truncated sample seen is counted as
  ``<role>_truncated``, and those dropped as ``<role>_truncated_dropped``.
- ``duplicates``: ``keep`` (default: samples are draws, a text drawn twice
  weighs twice in MC-PO's pool) or ``collapse`` (one member per distinct text,
  the first); counted as ``<role>_duplicates_collapsed``. Samples ranked by a
  scores table are always collapsed (one score per text).
- A text identical to the preferred answer is never a negative (``build``
  removes it from pools and pairs, whatever these settings).

``length_penalty`` (default 0): when answers are ranked by a score, the
ranking key is ``score - length_penalty * num_tokens`` (minus
``truncated_penalty`` for a truncated sample under ``penalize``), with
``num_tokens`` the reference token count from the ``logprobs`` tables, since
reward models favour long answers. It picks the preferred answer and orders
the derived pairs; an answer with no log-prob then has no key (unranked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import polars as pl

Duplicates = Literal["keep", "collapse"]
Empty = Literal["drop", "keep"]
Truncated = Literal["keep", "drop", "penalize"]
IdenticalPools = Literal["drop", "keep"]

CHOICES: dict[str, tuple[str, ...]] = {
    "duplicates": ("keep", "collapse"),
    "empty": ("drop", "keep"),
    "truncated": ("keep", "drop", "penalize"),
    "identical_pools": ("drop", "keep"),
}

Count = Callable[[str, int], None]


def _count(frame: pl.LazyFrame) -> int:
    return int(frame.select(pl.len()).collect().item())


def samples_long(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """``[prompt_id, pos, text, truncated]``: one row per generated sample, ``truncated`` = cut at max_new_tokens."""
    return (
        candidates.select("prompt_id", "samples", pl.int_ranges(pl.col("samples").list.len()).alias("pos"))
        .explode(["samples", "pos"])
        .filter(pl.col("pos").is_not_null())
        .select(
            "prompt_id",
            "pos",
            pl.col("samples").struct.field("text").alias("text"),
            (pl.col("samples").struct.field("finish_reason") == "length").alias("truncated"),
        )
    )


def identical_prompts(long: pl.LazyFrame) -> pl.LazyFrame:
    """``[prompt_id]`` of the prompts with two or more members, all of one text (by completion id ``cid``)."""
    per_prompt = long.group_by("prompt_id").agg(pl.len().alias("n"), pl.col("cid").n_unique().alias("distinct"))
    return per_prompt.filter((pl.col("n") > 1) & (pl.col("distinct") == 1)).select("prompt_id")


def clean(
    long: pl.LazyFrame,
    *,
    role: str,
    order: str,
    count: Count,
    duplicates: Duplicates,
    empty: Empty,
    truncated: Truncated,
    identical_pools: IdenticalPools,
) -> tuple[pl.LazyFrame, pl.LazyFrame | None]:
    """Apply the rules (see the module docstring) to ``long`` [prompt_id, ``order``, text, cid, truncated].

    Returns the kept members and, under ``identical_pools="drop"``, the prompt ids to drop (else None).
    ``count(name, n)`` receives each rule's count.
    """
    dropped = None
    if identical_pools == "drop":
        dropped = identical_prompts(long)
        count(f"dropped_identical_{role}", _count(dropped))
        long = long.join(dropped, on="prompt_id", how="anti")
    if empty == "drop":
        blank = pl.col("text").str.strip_chars() == ""
        count(f"{role}_empty_dropped", _count(long.filter(blank)))
        long = long.filter(~blank)
    count(f"{role}_truncated", _count(long.filter(pl.col("truncated"))))
    if truncated == "drop":
        count(f"{role}_truncated_dropped", _count(long.filter(pl.col("truncated"))))
        long = long.filter(~pl.col("truncated"))
    if duplicates == "collapse":
        first = pl.col(order) == pl.col(order).min().over("prompt_id", "cid")
        count(f"{role}_duplicates_collapsed", _count(long.filter(~first)))
        long = long.filter(first)
    return long, dropped


def adjusted_key(
    answers: pl.LazyFrame, num_tokens: pl.LazyFrame, *, length_penalty: float, truncated_penalty: float | None
) -> pl.LazyFrame:
    """``answers`` [prompt_id, idx, text, cid, key, truncated] with ``key`` (= -score) length/truncation-penalized.

    ``num_tokens`` [prompt_id, cid, num_tokens]: the reference token counts. ``truncated_penalty``: None
    leaves truncated answers' scores as they are.
    """
    key = pl.col("key")
    if truncated_penalty is not None:
        key = key + pl.when(pl.col("truncated")).then(pl.lit(truncated_penalty)).otherwise(0.0)
    if length_penalty:
        answers = answers.join(num_tokens.select("prompt_id", "cid", "num_tokens"), on=["prompt_id", "cid"], how="left")
        key = key + length_penalty * pl.col("num_tokens").cast(pl.Float64)
    return answers.with_columns(key.alias("key")).select("prompt_id", "idx", "text", "cid", "key", "truncated")
