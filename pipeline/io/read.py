"""Read a stage's output folder after checking it against its manifest.

Checks, each failing with an error that names the file: the manifest exists
(else the run did not finish); every listed shard exists with the listed size
(and sha256 when asked); each opens as Parquet (a truncated file does not);
its footer row count matches the manifest; its columns match the schema.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.inside import inside
from prefpool.pipeline.io.layout import MANIFEST, META_DIR, find_meta
from prefpool.pipeline.io.manifest import Manifest, file_sha256, load_manifest
from prefpool.pipeline.io.schemas import check_schema, conform, get_schema
from prefpool.pipeline.io.shards import open_shard, read_shard


def checked_shards(
    folder: str | Path, *, schema: str | None = None, check_hashes: bool = False
) -> tuple[Manifest, list[Path]]:
    """Return the manifest and the shard paths in manifest order, after the checks above.

    ``schema`` (a name from ``schemas.SCHEMAS``) requires the folder to hold that table.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if manifest is None:
        raise PipelineInputError(
            f"no {MANIFEST} (in {META_DIR}/): not a pipeline output, or a run that did not finish "
            "(rerun the stage with the same arguments to resume it)",
            file=folder,
        )
    name = manifest.identity.schema
    if schema is not None and schema != name:
        raise PipelineInputError(f"holds a {name!r} table, expected {schema!r}", file=folder)
    expected = get_schema(name)
    paths = []
    for entry in manifest.shards:
        path = inside(folder, entry.file, listed_in=find_meta(folder, MANIFEST), what="shard")
        if not path.exists():
            raise PipelineInputError("shard listed in the manifest is missing", file=path)
        if path.stat().st_size != entry.bytes:
            raise PipelineInputError(
                f"size {path.stat().st_size} bytes, manifest says {entry.bytes} (truncated?)", file=path
            )
        if check_hashes and file_sha256(path) != entry.sha256:
            raise PipelineInputError("sha256 differs from the manifest (corrupt?)", file=path)
        parquet = open_shard(path)
        if parquet.metadata.num_rows != entry.rows:
            raise PipelineInputError(f"{parquet.metadata.num_rows} rows, manifest says {entry.rows}", file=path)
        check_schema(parquet.schema_arrow, expected, file=path)
        paths.append(path)
    return manifest, paths


def read_table(folder: str | Path, *, schema: str | None = None, check_hashes: bool = False) -> pa.Table:
    """The whole table, rows in manifest (= canonical, sorted by ``prompt_id``) order."""
    manifest, paths = checked_shards(folder, schema=schema, check_hashes=check_hashes)
    expected = get_schema(manifest.identity.schema)
    tables = [conform(read_shard(p, manifest.identity.schema), expected) for p in paths]
    if not tables:
        return expected.empty_table()
    return pa.concat_tables(tables).replace_schema_metadata(None)


def scan(folder: str | Path, *, schema: str | None = None) -> pl.LazyFrame:
    """A lazy polars scan over the checked shards, for tables larger than memory."""
    manifest, paths = checked_shards(folder, schema=schema)
    if not paths:
        return pl.from_arrow(get_schema(manifest.identity.schema).empty_table()).lazy()
    return pl.scan_parquet([str(p) for p in paths])
