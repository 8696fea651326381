"""Parquet shards: file names, atomic writes with an explicit schema, checked opens.

A shard's name says which ``--shard i/N`` run and which work unit wrote it:
``part-<i:05d>-of-<N:05d>-<unit:05d>.parquet``. An unsharded run is shard
``0/1``, and ``merge`` rewrites shard runs under that same naming, so a merged
folder looks exactly like an unsharded one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefpool.core.secrets import redact
from prefpool.pipeline.io.atomic import atomic_path
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.schemas import check_schema, conform, get_schema

# Rows of the examples table carry up to tens of answers (tens of kB), so ~1k
# rows make row groups of a few to tens of MB: large enough for zstd to work
# well, small enough that a reader can stream or skip groups.
ROW_GROUP_ROWS = 1024
COMPRESSION = "zstd"
META_PREFIX = "prefpool."
_NAME = re.compile(r"^part-(\d{5})-of-(\d{5})-(\d{5})\.parquet$")


@dataclass(frozen=True)
class ShardName:
    shard: ShardSpec
    unit: int

    def __str__(self) -> str:
        return f"part-{self.shard.index:05d}-of-{self.shard.count:05d}-{self.unit:05d}.parquet"

    @classmethod
    def parse(cls, name: str) -> ShardName | None:
        match = _NAME.match(name)
        if match is None:
            return None
        index, count, unit = (int(g) for g in match.groups())
        return cls(ShardSpec(index, count), unit)


def _write_parquet(tmp: Path, table: pa.Table, row_group_rows: int) -> None:
    # Separate function so tests can make a write fail half-way.
    with pq.ParquetWriter(tmp, table.schema, compression=COMPRESSION) as writer:
        writer.write_table(table, row_group_size=row_group_rows)


def write_shard(
    path: str | Path,
    table: pa.Table,
    *,
    schema_name: str,
    metadata: dict[str, object],
    row_group_rows: int = ROW_GROUP_ROWS,
) -> None:
    """Write ``table`` cast to the named schema; ``metadata`` values are stored as JSON, secrets redacted.

    The file appears under ``path`` only once it is complete.
    """
    schema = get_schema(schema_name)
    kv = {f"{META_PREFIX}schema": schema_name}
    kv.update({f"{META_PREFIX}{k}": json.dumps(v, ensure_ascii=False) for k, v in redact(metadata).items()})
    table = conform(table, schema).replace_schema_metadata(kv)
    with atomic_path(path) as tmp:
        _write_parquet(tmp, table, row_group_rows)


def open_shard(path: str | Path) -> pq.ParquetFile:
    """Open a shard, turning a truncated or corrupt file into an error that names it."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PipelineInputError(f"not a readable Parquet file (truncated or corrupt?): {exc}", file=path) from exc


def shard_metadata(parquet: pq.ParquetFile) -> dict[str, object]:
    """The ``prefpool.*`` key/value metadata of a shard, JSON-decoded."""
    raw = parquet.schema_arrow.metadata or {}
    out: dict[str, object] = {}
    for key, value in raw.items():
        name = key.decode()
        if not name.startswith(META_PREFIX):
            continue
        name = name[len(META_PREFIX) :]
        text = value.decode()
        out[name] = text if name == "schema" else json.loads(text)
    return out


def read_shard(path: str | Path, schema_name: str) -> pa.Table:
    """Read a whole shard after checking its columns against the named schema."""
    parquet = open_shard(path)
    check_schema(parquet.schema_arrow, get_schema(schema_name), file=path)
    try:
        return parquet.read()
    except (pa.ArrowException, OSError) as exc:
        raise PipelineInputError(f"cannot read Parquet data (corrupt?): {exc}", file=path) from exc
