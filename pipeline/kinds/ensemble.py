"""Several scorers' ``scores`` tables combined into one ranking score, by a stated rule.

``build --scores A --scores B --ensemble RULE``: the folders are grouped by
scorer (several folders of one scorer, e.g. its ``--shard`` runs, are one
table); every scorer must have scored the same kind of table (``examples`` or
``candidates``). A completion takes part only where every scorer scored it
(others are unranked: ``build`` counts them as ``answers_without_score``).

- ``zmean``: the mean over scorers of the completion's z-score within its
  prompt under that scorer, ``(s - mean) / std`` over the prompt's scored
  completions (population std; a prompt whose completions all score alike
  under a scorer gets 0 from it). Scales differ between reward models; z-scores
  make them comparable.
- ``vote``: a majority vote of the scorers' rankings: a completion's score is
  the number of other completions of its prompt that a strict majority of the
  scorers score lower (Copeland's count of pairwise majority wins).

The rule and each scorer's identity are stored in the ``build`` manifest
(config, inputs and provenance) and its ``report.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.kinds.inputs import scores_lookup

Rule = Literal["zmean", "vote"]
RULES: tuple[str, ...] = ("zmean", "vote")


def scorer_groups(folders: Sequence[str | Path]) -> dict[str, list[str | Path]]:
    """The ``scores`` folders by scorer identity (JSON, sorted keys), in the order first given."""
    groups: dict[str, list[str | Path]] = {}
    for folder in folders:
        manifest, _ = checked_shards(folder, schema="scores")
        groups.setdefault(json.dumps(manifest.identity.config.get("scorer"), sort_keys=True), []).append(folder)
    return groups


def _zscore(column: str) -> pl.Expr:
    """``column`` standardized within each prompt (population std; 0 where the prompt's values are all equal)."""
    mean = pl.col(column).mean().over("prompt_id")
    std = pl.col(column).std(ddof=0).over("prompt_id")
    return pl.when(std > 0).then((pl.col(column) - mean) / std).otherwise(0.0)


def combine(folders: Sequence[str | Path], rule: Rule) -> tuple[pl.LazyFrame, str, list[dict]]:
    """``([prompt_id, completion_id, score], the table scored, the scorers' identities)`` (module docstring)."""
    groups = scorer_groups(folders)
    if len(groups) < 2:
        raise PipelineInputError(
            f"ensemble {rule!r} needs the scores of two or more scorers; these come from one",
            file=", ".join(str(f) for f in folders),
        )
    tables, sources = [], set()
    for folders_of_one in groups.values():
        table, source = scores_lookup(folders_of_one)
        tables.append(table)
        sources.add(source)
    if len(sources) > 1:
        raise PipelineInputError(
            f"the scorers scored different tables ({', '.join(sorted(sources))}); an ensemble ranks one table",
            file=", ".join(str(f) for f in folders),
        )
    keys = ["prompt_id", "completion_id"]
    wide = tables[0].select(*keys, pl.col("score").alias("s0"))
    for i, table in enumerate(tables[1:], start=1):
        wide = wide.join(table.select(*keys, pl.col("score").alias(f"s{i}")), on=keys, how="inner")
    columns = [f"s{i}" for i in range(len(tables))]
    if rule == "zmean":
        combined = wide.select(*keys, (pl.sum_horizontal([_zscore(c) for c in columns]) / len(columns)).alias("score"))
    else:
        other = wide.rename({c: f"{c}_o" for c in columns} | {"completion_id": "other_id"})
        pairs = wide.join(other, on="prompt_id").filter(pl.col("completion_id") != pl.col("other_id"))
        wins = pl.sum_horizontal([(pl.col(c) > pl.col(f"{c}_o")).cast(pl.Int32) for c in columns])
        beats = (wins * 2 > len(columns)).cast(pl.Float64)
        counted = pairs.group_by(keys).agg(beats.sum().alias("score"))
        combined = wide.select(keys).join(counted, on=keys, how="left").with_columns(pl.col("score").fill_null(0.0))
    identities = [json.loads(k) for k in groups]
    return combined.select(*keys, pl.col("score").cast(pl.Float64)), sources.pop(), identities
