"""Inputs of ``build``: checked lazy scans, their fingerprints, and the reference log-probs lookup.

Every input folder is checked against its manifest (``tableio.checked_shards``)
before it is scanned. The fingerprint of an input is its manifest's identity,
shard hashes and provenance: ``build`` stores it as its own ``inputs``, so the
output's manifest holds the whole chain of stages that made it (``push`` turns
that chain into the data card).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.manifest import Manifest
from prefpool.pipeline.io.read import checked_shards, scan


def fingerprint(folder: str | Path, schema: str) -> dict:
    """What identifies an input table: its manifest's identity, shard hashes and provenance."""
    manifest, _ = checked_shards(folder, schema=schema)
    return {
        "stage": manifest.identity.stage,
        "schema": manifest.identity.schema,
        "identity": manifest.identity.to_json(),
        "total_rows": manifest.total_rows,
        "shards": [entry.sha256 for entry in manifest.shards],
        "provenance": manifest.provenance,
    }


def reference_caches(manifest: Manifest) -> list[tuple[str | None, dict]]:
    """``(cache_key, cache parts)`` of the reference log-probs a build table was made from, one per distinct
    key (``build`` refuses mixed keys, so a build table has one; a hand-made table may have none).

    Read from the ``logprobs`` fingerprints in the build manifest's inputs; the parts are
    ``pipeline.model.cache_key.cache_components`` (weights, tokenizer/template, max_length, truncation, dtype).
    """
    inputs = manifest.identity.inputs if isinstance(manifest.identity.inputs, dict) else {}
    found: list[tuple[str | None, dict]] = []
    for fp in inputs.get("logprobs") or []:
        config = (fp.get("identity") or {}).get("config") or {} if isinstance(fp, dict) else {}
        cache = config.get("cache")
        if isinstance(cache, dict) and (config.get("cache_key"), cache) not in found:
            found.append((config.get("cache_key"), cache))
    return found


def with_completion_id(frame: pl.LazyFrame, text: str = "text", out: str = "cid") -> pl.LazyFrame:
    """Add ``ids.completion_id`` of the ``text`` column (hashed in Python, batch by batch)."""
    return frame.with_columns(
        pl.col(text)
        .map_batches(lambda s: pl.Series([completion_id(t) for t in s], dtype=pl.String), return_dtype=pl.String)
        .alias(out)
    )


def logprobs_lookup(folders: Sequence[str | Path], *, keep: pl.Expr | None = None) -> pl.LazyFrame:
    """``[prompt_id, cid, logp, num_tokens]``, one row per (prompt_id, completion_id).

    ``keep``: a row filter (``build``'s shard) applied right after the scans; the
    checks below still cover every row, so a shard run fails where the whole run would.

    Raises when a value is NaN or infinite (naming the folder and ids), or when
    the tables were made under different ``cache_key``s (another reference
    model, tokenizer or max length: mixing them would give a wrong loss).
    """
    if not folders:
        raise PipelineInputError("build needs at least one logprobs folder")
    scans = []
    for folder in folders:
        frame = scan(folder, schema="logprobs").select("prompt_id", "completion_id", "logp", "num_tokens", "cache_key")
        bad = frame.filter(~pl.col("logp").is_finite()).head(1).collect()
        if bad.height:
            row = bad.row(0, named=True)
            raise PipelineInputError(
                f"reference log-prob is {row['logp']} for prompt_id {row['prompt_id']}, "
                f"completion_id {row['completion_id']} (NaN/inf is never a valid value)",
                file=folder,
                column="logp",
            )
        scans.append(frame)
    table = pl.concat(scans)
    keys = table.select(pl.col("cache_key").unique()).collect()["cache_key"].to_list()
    if len(keys) > 1:
        raise PipelineInputError(
            f"the logprobs tables were computed under {len(keys)} different cache keys {sorted(keys)}: "
            "all reference log-probs of one training table must come from the same reference setup",
            file=", ".join(str(f) for f in folders),
            column="cache_key",
        )
    if keep is not None:
        table = table.filter(keep)
    # The same (prompt, completion) scored twice under one cache key has one value.
    return table.unique(subset=["prompt_id", "completion_id"], keep="any").select(
        "prompt_id", pl.col("completion_id").alias("cid"), "logp", "num_tokens"
    )


def scores_lookup(folders: Sequence[str | Path]) -> tuple[pl.LazyFrame, str]:
    """``[prompt_id, completion_id, score]`` from ``score`` outputs, and the table they scored.

    The folders (e.g. one per ``--shard``) must come from one scorer over one
    kind of table (``examples`` or ``candidates``). Raises on a NaN or infinite
    score, naming the folder and the row's ids.
    """
    frames, made_over, scorers = [], set(), set()
    for folder in folders:
        manifest, _ = checked_shards(folder, schema="scores")
        made_over.add(str(manifest.identity.inputs.get("schema")))  # type: ignore[union-attr]
        scorers.add(json.dumps(manifest.identity.config.get("scorer"), sort_keys=True))
        frame = scan(folder, schema="scores").select("prompt_id", "completion_id", "score")
        bad = frame.filter(~pl.col("score").is_finite()).head(1).collect()
        if bad.height:
            row = bad.row(0, named=True)
            raise PipelineInputError(
                f"score is {row['score']} for prompt_id {row['prompt_id']}, completion_id {row['completion_id']} "
                "(NaN/inf cannot be ranked)",
                file=folder,
                column="score",
            )
        frames.append(frame)
    label = ", ".join(str(f) for f in folders)
    if len(made_over) > 1 or len(scorers) > 1:
        raise PipelineInputError(
            "the scores tables come from different scorers or input tables; "
            "rank one build by one scorer's scores of one table, or combine scorers with ensemble_rule "
            "(--ensemble-rule zmean | vote)",
            file=label,
        )
    (source,) = made_over
    if source not in ("examples", "candidates"):
        raise PipelineInputError(
            f"the scores were made over a {source!r} table, not examples or candidates", file=label
        )
    table = pl.concat(frames).unique(subset=["prompt_id", "completion_id"], keep="first")
    return table, source
