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
Nothing is written before the first shard (or ``finish``): a run that fails
its checks leaves no folder, ``run.json`` or staging folder behind. An
``--out`` that is a file, or one of the run's own inputs (``sources``), is
refused up front. Two runs never write the same folder at once: every stage runs under the
folder's ``writer_lock``.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import pyarrow as pa

from prefpool.core.outputs import check_folder, writing
from prefpool.pipeline.io import provenance as prov
from prefpool.pipeline.io.atomic import is_temp_name, write_json
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.layout import MANIFEST, RUN_MARKER, SIDECARS, find_meta, meta_dir, meta_path, migrate_legacy
from prefpool.pipeline.io.manifest import (
    Manifest,
    RunIdentity,
    ShardEntry,
    check_identity,
    file_sha256,
    load_manifest,
    read_json_file,
    write_manifest,
)
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.shards import ShardName, open_shard, shard_metadata, write_shard
from prefpool.pipeline.io.swap import real_folder, swap_in

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
    check_rows_per_unit(rows_per_unit)
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
        sources: Sequence[str | Path] = (),
    ) -> None:
        check_rows_per_unit(rows_per_unit)
        self.out = real_folder(check_folder(out))  # a link: written at its target, the link kept
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
        # What _begin does before the first write: nothing touches the disk until then, so a run that
        # fails its checks (or before its first shard) leaves no folder, run.json or staging behind.
        self._begun = False
        self._made = False
        self._wipe = False
        self._refuse_sources(sources)
        self.work = self._open(overwrite)

    # -- choosing the folder to work in ------------------------------------

    def _refuse_sources(self, sources: Sequence[str | Path]) -> None:
        out = self.out.resolve()
        for source in sources:
            if Path(source).resolve() == out:
                raise OutputConflictError(
                    f"--out {self.out} is also an input of this run; choose another --out folder (the input is "
                    "read while the output is written, and must never be replaced by it)"
                )

    def _open(self, overwrite: bool) -> Path:
        out = self.out
        if not out.exists() or not any(out.iterdir()):
            return out
        existing = existing_identity(out)
        if existing is None:
            raise OutputConflictError(
                f"{out} is not empty and holds no prefpool output ({MANIFEST} or {RUN_MARKER}); "
                "choose an empty or new --out folder"
            )
        kind, identity = existing
        has_shards = any(ShardName.parse(p.name) for p in out.iterdir())
        if kind != "damaged" and identity == self.identity.to_json():
            if kind == "complete" and self._output_ok(out):
                migrate_legacy(out)  # a folder of the layout before: the same output, its files moved
                self.complete = True
                return out
            return out  # an unfinished or damaged run of these settings: resume it (its manifest is redone)
        if kind == "damaged" and not has_shards and not overwrite:
            raise OutputConflictError(
                f"{out} holds prefpool files that cannot be read ({identity}) and no shard; they are not replaced "
                "without a word: pass overwrite=True (--overwrite) to replace them, or choose another --out folder"
            )
        if kind != "complete" and not has_shards:
            return out  # a run that failed before writing any shard: nothing to keep
        if not overwrite:
            if kind == "damaged":
                raise OutputConflictError(
                    f"{out} holds a prefpool output that cannot be read ({identity}); pass overwrite=True "
                    "(--overwrite) to replace it, or choose another --out folder"
                )
            other = RunIdentity(**identity)
            what = "a complete" if kind == "complete" else "an unfinished"
            raise OutputConflictError(
                f"{out} holds {what} {other.stage!r} run with different settings "
                f"({', '.join(self.identity.differences(other))} differ); pass overwrite=True "
                "(--overwrite) to replace it, or choose another --out folder"
            )
        staging = out.parent / f".{out.name}.staging"
        found = existing_identity(staging) if staging.is_dir() else None
        # A staging folder is never a complete output: safe to drop, unless it is this run's, half done.
        self._wipe = found is None or found[0] == "damaged" or found[1] != self.identity.to_json()
        return staging

    def _output_ok(self, folder: Path) -> bool:
        try:
            checked_shards(folder)
        except PipelineInputError:
            return False
        return True

    def _begin(self) -> None:
        """Make the work folder and write ``run.json`` (in ``.prefpool/``): the run has passed its checks and
        writes now. prefpool's own files of a folder of the layout before are moved into ``.prefpool/``."""
        if self._begun:
            return
        self._made = not self.work.exists()
        with writing(self.work):
            if self._wipe:
                shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True, exist_ok=True)
            migrate_legacy(self.work)  # nothing of prefpool's own stays beside the shards
            meta_dir(self.work).mkdir(exist_ok=True)
            meta_path(self.work, MANIFEST).unlink(missing_ok=True)  # an earlier attempt's, damaged: redone last
            write_json(meta_path(self.work, RUN_MARKER), self.identity.to_json())
        self._begun = True
        self._wipe = False

    def _undo_begin(self) -> None:
        """The first shard failed (no space, ...): leave no ``run.json`` (nor a folder this run made) behind."""
        if self.units_written or not self._begun:
            return
        meta_path(self.work, RUN_MARKER).unlink(missing_ok=True)
        if meta_dir(self.work).is_dir() and not any(meta_dir(self.work).iterdir()):
            meta_dir(self.work).rmdir()
        if self._made and not any(self.work.iterdir()):
            self.work.rmdir()
        self._begun = False

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
        if self._wipe or not path.exists():
            return False
        try:
            meta = shard_metadata(open_shard(path))
        except PipelineInputError:
            return False  # unreadable: write it again
        return isinstance(meta.get("unit"), dict) and meta["unit"].get("key") == unit.key

    def write(self, unit: Unit, table: pa.Table) -> None:
        self._begin()
        try:
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
        except BaseException:
            self._undo_begin()
            raise
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
        self._begin()
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
            if name not in SIDECARS:
                raise ValueError(f"sidecar {name!r} is not one of layout.SIDECARS {SIDECARS}")
            write_json(meta_path(self.work, name), obj)
            names.append(name)
        manifest = Manifest(self.identity, tuple(entries), self.provenance, tuple(names), summary or {})
        write_manifest(self.work, manifest)
        if self.work != self.out:
            self._swap_in()
        self.complete = True
        return manifest

    def _swap_in(self) -> None:
        swap_in(self.work, self.out)
        self.work = self.out


def check_rows_per_unit(rows_per_unit: int) -> None:
    if not isinstance(rows_per_unit, int) or isinstance(rows_per_unit, bool) or rows_per_unit < 1:
        raise PipelineConfigError(f"rows_per_unit (--rows-per-unit) must be an integer >= 1, got {rows_per_unit!r}")


def existing_identity(folder: Path) -> tuple[str, dict | str] | None:
    """What ``folder`` holds: ``("complete", identity)`` (a manifest), ``("unfinished", identity)``
    (``run.json`` only), ``("damaged", reason)`` (either file unreadable), or None (neither file)."""
    try:
        manifest = load_manifest(folder)
    except PipelineInputError as exc:
        return "damaged", str(exc)
    if manifest is not None:
        return "complete", manifest.identity.to_json()
    marker = find_meta(folder, RUN_MARKER)
    if marker is None:
        return None
    try:
        return "unfinished", check_identity(read_json_file(marker, RUN_MARKER), marker)
    except PipelineInputError as exc:
        return "damaged", str(exc)
