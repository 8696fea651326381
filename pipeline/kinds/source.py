"""A build table wherever it lives: a stage output folder, a pushed (Hub-ready) folder, or a Hub dataset id.

``open_table(location, split=...)`` resolves:

- a ``build`` output folder (``.prefpool/manifest.json``): its shards, checked against the manifest;
- a folder ``prefpool push`` wrote (``README.md`` card with a ``prefpool`` block, ``data/<split>-*.parquet``):
  one split's files, checked against the kind's schema and the card's row count;
- a Hub dataset id (``owner/name``) that is not a local path: the repo's snapshot (``io.hub``, offline
  from the local cache), then as a pushed folder.

Either way the result says the table kind, the reference caches (key and parts) the trainer checks,
the build config and provenance, and reads the rows in the table's order. So ``prefpool train`` and
``eval`` train and evaluate on what was shared exactly as on the folder it was pushed from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from prefpool.core.errors import ConfigError, MissingInputError
from prefpool.pipeline.io.card import CARD, read_card, split_order, stage_chain
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.hub import dataset_snapshot
from prefpool.pipeline.io.inside import check_resolved_inside, inside
from prefpool.pipeline.io.layout import MANIFEST, find_meta
from prefpool.pipeline.io.manifest import Manifest, file_sha256, load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.schemas import check_schema, conform
from prefpool.pipeline.io.shards import open_shard, read_shard

from . import KINDS, get_kind
from .inputs import reference_caches


@dataclass(frozen=True)
class TableSource:
    """One training table: where it is, what it is, how its reference values were made."""

    location: str  # the folder or Hub id as given
    kind: str  # a name in KINDS
    split: str | None  # the split of a pushed folder / Hub repo; None for a build output folder
    folder: Path  # the build output folder, or the pushed folder (a Hub snapshot)
    files: tuple[Path, ...]  # Parquet files in row order
    rows: int
    caches: tuple[tuple[str | None, dict], ...]  # (cache key, parts) of the reference log-probs
    config: dict  # the build stage's config
    provenance: dict  # the build stage's provenance
    examples_source: str  # what the examples were ingested from
    manifest: Manifest | None = None  # a build output folder's manifest
    fingerprint: str = ""  # sha256 of what the table holds: the manifest file, or the split's card entry

    @property
    def label(self) -> str:
        return self.location if self.split is None else f"{self.location} (split {self.split})"

    def read(self) -> pa.Table:
        """Every row, in the table's order (the build's canonical order), in the kind's columns."""
        kind = get_kind(self.kind)
        schema = kind.schema
        if self.manifest is not None:
            return read_table(self.folder, schema=self.kind)
        tables = []
        for path in self.files:
            check_schema(open_shard(path).schema_arrow, schema, file=path, made_by=kind.recipe)
            tables.append(conform(read_shard(path, self.kind), schema))
        table = pa.concat_tables(tables).replace_schema_metadata(None) if tables else schema.empty_table()
        if table.num_rows != self.rows:
            raise PipelineInputError(
                f"split {self.split!r} has {table.num_rows} rows, the card says {self.rows}", file=self.folder
            )
        return table


def _first_ingest_source(chain: list[dict]) -> str:
    ingest = next((node for node in chain if node["stage"] == "ingest"), None)
    return str((ingest or {}).get("config", {}).get("source") or "unknown")


def _from_build_folder(location: str, folder: Path, manifest: Manifest, split: str | None) -> TableSource:
    if split is not None:
        raise ConfigError(f"split {split!r}: {location} is a build output folder (one table, no splits)")
    kind = manifest.identity.schema
    if kind not in KINDS:
        raise PipelineInputError(f"holds a {kind!r} table, not a build table ({', '.join(KINDS)})", file=folder)
    listed_in = find_meta(folder, MANIFEST)
    return TableSource(
        location=location,
        kind=kind,
        split=None,
        folder=folder,
        files=tuple(inside(folder, s.file, listed_in=listed_in, what="shard") for s in manifest.shards),
        rows=manifest.total_rows,
        caches=tuple(reference_caches(manifest)),
        config=manifest.identity.config,
        provenance=manifest.provenance,
        examples_source=_first_ingest_source(stage_chain(manifest)),
        manifest=manifest,
        fingerprint=file_sha256(find_meta(folder, MANIFEST)),
    )


def _from_pushed_folder(location: str, folder: Path, card: dict, split: str | None, default_split: str) -> TableSource:
    block = card["prefpool"]
    kind, splits = block["table_kind"], block["splits"]
    if kind not in KINDS:
        raise PipelineInputError(
            f"the card's table_kind {kind!r} is not a build table ({', '.join(KINDS)})", file=folder
        )
    names = split_order(splits)
    if split is None:
        split = names[0] if len(names) == 1 else default_split
    if split not in splits:
        raise ConfigError(f"split {split!r}: {location} has the splits {', '.join(names)}; choose one")
    entry = splits[split]
    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    for file in files:
        check_resolved_inside(folder, file, listed_in=folder / CARD, what=f"split {split!r} file {file.name!r}")
    if not files:
        raise PipelineInputError(f"no data/{split}-*.parquet files for split {split!r}", file=folder)
    if len(files) != entry.get("files", len(files)):
        raise PipelineInputError(
            f"split {split!r}: {len(files)} data files, the card says {entry['files']} (incomplete download?)",
            file=folder,
        )
    stages = entry.get("stages") or [{"stage": "build", "config": {}, "provenance": {}}]
    caches = ((entry.get("cache_key"), entry["reference_cache"]),) if entry.get("reference_cache") else ()
    return TableSource(
        location=location,
        kind=kind,
        split=split,
        folder=folder,
        files=tuple(files),
        rows=int(entry["rows"]),
        caches=caches,
        config=stages[0].get("config") or {},
        provenance=stages[0].get("provenance") or {},
        examples_source=_first_ingest_source(stages),
        # the entry holds the pushed build's manifest sha256, the rows and the cache key
        fingerprint=hashlib.sha256(json.dumps([split, entry], sort_keys=True).encode("utf-8")).hexdigest(),
    )


def open_table(
    location: str | Path | TableSource, *, split: str | None = None, default_split: str = "train"
) -> TableSource:
    """The build table at ``location`` (see the module docstring). ``split``: of a pushed folder or Hub
    repo; None takes its only split, else ``default_split``."""
    if isinstance(location, TableSource):
        return location
    folder = Path(location)
    if folder.is_dir():
        manifest = load_manifest(folder)
        if manifest is not None:
            return _from_build_folder(str(location), folder, manifest, split)
        card = read_card(folder)
        if card is not None:
            return _from_pushed_folder(str(location), folder, card, split, default_split)
        raise PipelineInputError(
            "neither a finished build output (no .prefpool/manifest.json: rerun the stage to finish it) "
            f"nor a folder `prefpool push` wrote (no {CARD} with a prefpool block)",
            file=folder,
        )
    if folder.exists():
        raise MissingInputError(f"{location}: a file; expected a build output folder, a pushed folder or a Hub id")
    snapshot = dataset_snapshot(str(location), allow_patterns=[CARD, "data/*"])
    card = read_card(snapshot)
    if card is None:
        raise PipelineInputError(
            f"the Hub dataset {location} has no prefpool card ({CARD} with a prefpool block): not pushed by "
            "`prefpool push`; ingest it with `prefpool ingest` instead",
            file=snapshot,
        )
    return _from_pushed_folder(str(location), snapshot, card, split, default_split)
