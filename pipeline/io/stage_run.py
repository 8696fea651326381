"""Resumable, shardable stage runs: work units, skip-if-done, refuse-on-conflict.

The model every stage follows:

1. Put the input rows in canonical order (sorted by ``prompt_id``), keep the
   rows this ``--shard i/N`` owns (``stable_bucket(prompt_id, N) == i``), and
   cut them into units of ``rows_per_unit`` rows (``plan_units``). Each unit
   has a key: a hash of its rows, so a unit is the same unit on every rerun.
2. ``StageRun.pending(units)`` returns the units with no finished shard: a
   shard counts as finished when it exists under its final name (writes are
   atomic) and its metadata carries the unit's key.
3. ``StageRun.write(unit, table)`` writes one shard per unit, atomically.
4. ``StageRun.finish()`` writes sidecar files, then ``manifest.json`` last
   (``run.json``, the run's identity, was written first); all three in the
   output's ``.prefpool/`` (``layout``), so the folder holds only Parquet.

Rerunning with the same identity (stage, config, input fingerprint, shard,
unit size) resumes, or returns at once if the output is complete. A different
identity over an existing output is refused unless ``overwrite=True``; even
then the new run is built in a sibling staging folder and swapped in only
when complete, so a failing run never destroys an earlier output.
Two runs must not write the same folder at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import pyarrow as pa

from prefpool.pipeline.io import provenance as prov
from prefpool.pipeline.io.atomic import is_temp_name, write_json
from prefpool.pipeline.io.errors import OutputConflictError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.layout import MANIFEST, RUN_MARKER, find_meta, meta_dir, meta_path, migrate_legacy
from prefpool.pipeline.io.manifest import (
    Manifest,
    RunIdentity,
    ShardEntry,
    file_sha256,
    load_manifest,
    write_manifest,
)
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.shards import ShardName, open_shard, shard_metadata, write_shard

# The run's identity (``layout.RUN_MARKER``) is written first and kept: it marks the folder as a
# run's output even when the manifest (written last) is missing, so that the run can resume.

T = TypeVar("T")


@dataclass(frozen=True)
class Unit(Generic[T]):
    seq: int
    key: str
    items: tuple[T, ...]


def plan_units(items: Sequence[T], *, key_of: Callable[[T], str], rows_per_unit: int) -> list[Unit[T]]:
    """Cut ``items`` (already in canonical order, already filtered to this shard) into units."""
    if rows_per_unit < 1:
        raise ValueError("rows_per_unit must be >= 1")
    units = []
    for seq, start in enumerate(range(0, len(items), rows_per_unit)):
        chunk = tuple(items[start : start + rows_per_unit])
        digest = hashlib.sha256()
        for item in chunk:
            digest.update(key_of(item).encode("utf-8"))
            digest.update(b"\n")
        units.append(Unit(seq, digest.hexdigest(), chunk))
    return units


class StageRun:
    """One run of a stage into one output folder (see the module docstring)."""

    def __init__(
        self,
        out: str | Path,
        *,
        stage: str,
        schema: str,
        config: dict,
        inputs: object,
        shard: ShardSpec | str | None = None,
        rows_per_unit: int,
        overwrite: bool = False,
        seed: int | None = None,
        model: dict | None = None,
    ) -> None:
        self.out = Path(out)
        self.shard = ShardSpec.parse(shard)
        self.identity = RunIdentity(
            stage=stage,
            schema=schema,
            config=config,
            inputs=inputs,
            shard=str(self.shard),
            rows_per_unit=rows_per_unit,
        )
        self.provenance = prov.collect(seed=seed, model=model)
        self.units_written = 0
        self.units_skipped = 0
        self._planned: list[Unit] | None = None
        self.complete = False
        self.work = self._open(overwrite)

    # -- choosing the folder to work in ------------------------------------

    def _open(self, overwrite: bool) -> Path:
        out = self.out
        if not out.exists() or not any(out.iterdir()):
            out.mkdir(parents=True, exist_ok=True)
            return self._start(out)
        existing = self._identity_in(out)
        if existing is None:
            raise OutputConflictError(
                f"{out} is not empty and holds no prefpool output ({MANIFEST} or {RUN_MARKER}); "
                "choose an empty or new --out folder"
            )
        kind, identity = existing
        if identity == self.identity.to_json():
            if kind == "complete" and self._output_ok(out):
                migrate_legacy(out)  # a folder of the layout before: the same output, its files moved
                self.complete = True
                return out
            damaged = find_meta(out, MANIFEST)
            if damaged is not None:
                damaged.unlink()  # damaged output: resume it
            return self._start(out)
        if kind == "unfinished" and not any(ShardName.parse(p.name) for p in out.iterdir()):
            return self._start(out)  # a run that failed before writing any shard: nothing to keep
        if not overwrite:
            other = RunIdentity(**identity)
            what = "a complete" if kind == "complete" else "an unfinished"
            raise OutputConflictError(
                f"{out} holds {what} {other.stage!r} run with different settings "
                f"({', '.join(self.identity.differences(other))} differ); pass overwrite=True "
                "(--overwrite) to replace it, or choose another --out folder"
            )
        staging = out.parent / f".{out.name}.staging"
        found = self._identity_in(staging) if staging.exists() else None
        if found is None or found[1] != self.identity.to_json():
            shutil.rmtree(staging, ignore_errors=True)  # never a complete output, safe to drop
            staging.mkdir()
        return self._start(staging)

    @staticmethod
    def _identity_in(folder: Path) -> tuple[str, dict] | None:
        manifest = load_manifest(folder)
        if manifest is not None:
            return "complete", manifest.identity.to_json()
        marker = find_meta(folder, RUN_MARKER)
        if marker is not None:
            return "unfinished", json.loads(marker.read_text())
        return None

    def _output_ok(self, folder: Path) -> bool:
        try:
            checked_shards(folder)
        except PipelineInputError:
            return False
        return True

    def _start(self, folder: Path) -> Path:
        migrate_legacy(folder)  # nothing of prefpool's own stays beside the shards
        meta_dir(folder).mkdir(exist_ok=True)
        write_json(meta_path(folder, RUN_MARKER), self.identity.to_json())
        return folder

    # -- units ----------------------------------------------------------------

    def shard_path(self, unit: Unit) -> Path:
        return self.work / str(ShardName(self.shard, unit.seq))

    def pending(self, units: Sequence[Unit]) -> list[Unit]:
        """The units still to write; pass every unit of the run, in order."""
        self._planned = list(units)
        todo = []
        for unit in units:
            if self.complete or self._finished(unit):
                self.units_skipped += 1
            else:
                todo.append(unit)
        return todo

    def _finished(self, unit: Unit) -> bool:
        path = self.shard_path(unit)
        if not path.exists():
            return False
        try:
            meta = shard_metadata(open_shard(path))
        except PipelineInputError:
            return False  # unreadable: write it again
        return isinstance(meta.get("unit"), dict) and meta["unit"].get("key") == unit.key

    def write(self, unit: Unit, table: pa.Table) -> None:
        write_shard(
            self.shard_path(unit),
            table,
            schema_name=self.identity.schema,
            metadata={
                "stage": self.identity.stage,
                "unit": {"seq": unit.seq, "key": unit.key, "shard": str(self.shard)},
                "config": self.identity.config,
                "provenance": self.provenance,
            },
        )
        self.units_written += 1

    # -- the end ----------------------------------------------------------------

    def finish(self, *, sidecars: dict[str, object] | None = None, summary: dict | None = None) -> Manifest:
        """Write sidecar JSON files, then the manifest; swap a staging folder into place."""
        if self.complete:
            manifest = load_manifest(self.out)
            assert manifest is not None
            return manifest
        if self._planned is None:
            raise RuntimeError("call pending(units) with every unit before finish()")
        units = self._planned
        keep = {self.shard_path(u).name for u in units}
        for path in [*self.work.iterdir(), *meta_dir(self.work).iterdir()]:
            # leftovers of a crash (temp files) or of units that no longer exist
            if is_temp_name(path) or (ShardName.parse(path.name) and path.name not in keep):
                path.unlink()
        entries = []
        for unit in units:
            path = self.shard_path(unit)
            entries.append(
                ShardEntry(path.name, open_shard(path).metadata.num_rows, path.stat().st_size, file_sha256(path))
            )
        names = []
        for name, obj in (sidecars or {}).items():
            write_json(meta_path(self.work, name), obj)
            names.append(name)
        manifest = Manifest(self.identity, tuple(entries), self.provenance, tuple(names), summary or {})
        write_manifest(self.work, manifest)
        if self.work != self.out:
            self._swap_in()
        self.complete = True
        return manifest

    def _swap_in(self) -> None:
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        os.replace(self.out, old)
        os.replace(self.work, self.out)
        shutil.rmtree(old)
        self.work = self.out
