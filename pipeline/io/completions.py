"""The (prompt, completion) pairs of an `examples` or `candidates` table.

``logprobs`` and ``score`` both work per distinct completion of a prompt: the
dataset's answers of an ``examples`` table, or the generated samples of a
``candidates`` table. Both read their input here, so they enumerate the same
pairs in the same order and key them the same way: ``(prompt_id, completion_id)``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec, completion_id
from prefpool.pipeline.io.read import checked_shards, read_table

# input schema -> the list column whose structs hold a completion's `text`
TEXT_COLUMNS = {"examples": "answers", "candidates": "samples"}


def read_completion_table(input_dir: str | Path, *, stage: str) -> tuple[str, pa.Table, dict]:
    """``(schema name, table of prompt_id/prompt/texts, inputs provenance)`` of a checked input folder."""
    manifest, _ = checked_shards(input_dir)
    name = manifest.identity.schema
    if name not in TEXT_COLUMNS:
        raise PipelineInputError(f"holds a {name!r} table; {stage} reads 'examples' or 'candidates'", file=input_dir)
    table = read_table(input_dir).select(["prompt_id", "prompt", TEXT_COLUMNS[name]])
    inputs = {
        "schema": name,
        "identity": manifest.identity.to_json(),
        "shards": [entry.sha256 for entry in manifest.shards],
    }
    return name, table, inputs


def prompt_locations(input_dir: str | Path) -> dict[str, tuple[Path, int]]:
    """``prompt_id -> (shard file, row)`` of its first row in a checked input folder, for error messages."""
    _, paths = checked_shards(input_dir)
    found: dict[str, tuple[Path, int]] = {}
    for path in paths:
        ids = pq.read_table(path, columns=["prompt_id"]).column("prompt_id").to_pylist()
        for row, pid in enumerate(ids):
            found.setdefault(pid, (path, row))
    return found


def distinct_completions(table: pa.Table, schema: str, spec: ShardSpec) -> list[tuple[str, str, list, str]]:
    """Distinct ``(prompt_id, completion_id, prompt, text)`` owned by this shard, sorted by the two ids."""
    column = TEXT_COLUMNS[schema]
    found: dict[tuple[str, str], tuple[list, str]] = {}
    for row in table.to_pylist():
        if spec.owns(row["prompt_id"]):
            for item in row[column]:
                found.setdefault((row["prompt_id"], completion_id(item["text"])), (row["prompt"], item["text"]))
    return [(pid, cid, *found[(pid, cid)]) for pid, cid in sorted(found)]
