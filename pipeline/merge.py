"""Combine the outputs of ``--shard i/N`` runs into one folder.

Order guarantee: the merged table is sorted by ``prompt_id`` (a stable sort
over the shard runs taken in shard order, so rows sharing a ``prompt_id``, which
all come from one shard run, keep their order) and cut into units of the runs'
``rows_per_unit``. That is the canonical order every stage writes, so the
merged folder has the same rows, in the same order and the same files, as one
unsharded run; its identity is the unsharded one too, so rerunning the stage
without ``--shard`` on it finds it complete.

Sidecar JSON files (e.g. ``report.json``) are combined field by field: numbers
are summed, lists concatenated, dicts merged recursively, other values kept when
all runs agree. Top-level ``config`` and ``inputs`` fields (``build``'s report)
describe the run, not its rows: they are kept when all runs agree (as they do
for shards of one run), never summed or concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec
from prefpool.pipeline.io.layout import find_meta, read_meta
from prefpool.pipeline.io.manifest import Manifest
from prefpool.pipeline.io.read import checked_shards, read_table
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.io.writer_lock import writes_folder

SETTINGS_KEYS = ("config", "inputs")  # top-level sidecar fields that describe the run


def combine_sidecar(values: Sequence[dict]) -> dict:
    """``combine_json`` of the runs' sidecars, except ``SETTINGS_KEYS``: kept when equal, else listed."""
    keys = list(dict.fromkeys(k for v in values for k in v))
    out = {}
    for key in keys:
        parts = [v[key] for v in values if key in v]
        if key in SETTINGS_KEYS:
            out[key] = parts[0] if all(p == parts[0] for p in parts) else parts
        else:
            out[key] = combine_json(parts)
    return out


def combine_json(values: Sequence[object]) -> object:
    first = values[0]
    if all(isinstance(v, bool) for v in values) or not all(type(v) is type(first) for v in values):
        return first if all(v == first for v in values) else list(values)
    if isinstance(first, (int, float)):
        return sum(values)
    if isinstance(first, list):
        return [item for v in values for item in v]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: combine_json([v[k] for v in values if k in v]) for k in keys}
    return first if all(v == first for v in values) else list(values)


@writes_folder(lambda a: a["out"], command="merge")
def merge(dirs: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> Manifest:
    """Combine `--shard i/N` outputs into one folder equal to an unsharded run.

    The outputs must cover every ``i`` of one ``N``, each complete.

    Args:
        dirs: Output folders of the --shard i/N runs, one per i.
        out: Output folder: the merged shards (manifest.json and report.json in .prefpool/), as one unsharded run
            writes them.
        overwrite: Replace an existing, different output.
    """
    if not dirs:
        raise PipelineConfigError("merge needs the output folders of the --shard i/N runs, one per i")
    runs = []
    for folder in dirs:
        manifest, _ = checked_shards(folder)
        runs.append((ShardSpec.parse(manifest.identity.shard), Path(folder), manifest))
    runs.sort(key=lambda run: run[0].index)
    first = runs[0][2].identity
    for _, folder, manifest in runs:
        same = replace(manifest.identity, shard=first.shard)
        if same != first:
            diff = ", ".join(first.differences(same))
            raise PipelineInputError(f"is not a shard of the same run as {runs[0][1]} ({diff} differ)", file=folder)
    count = ShardSpec.parse(first.shard).count
    indices = [spec.index for spec, _, _ in runs]
    if indices != list(range(count)) or any(spec.count != count for spec, _, _ in runs):
        raise PipelineInputError(
            f"merge needs each shard 0..{count - 1} of {count} exactly once, got "
            + ", ".join(str(spec) for spec, _, _ in runs)
        )
    table = pa.concat_tables([read_table(folder) for _, folder, _ in runs])
    table = table.take(pc.sort_indices(table, [("prompt_id", "ascending")]))  # stable
    run = StageRun(
        out,
        stage=first.stage,
        schema=first.schema,
        config=first.config,
        inputs=first.inputs,
        shard=None,
        rows_per_unit=first.rows_per_unit,
        overwrite=overwrite,
        sources=[folder for _, folder, _ in runs],
    )
    ids = table.column("prompt_id").to_pylist()
    units = plan_units(list(range(table.num_rows)), key_of=lambda i: ids[i], rows_per_unit=first.rows_per_unit)
    for unit in run.pending(units):
        run.write(unit, table.take(list(unit.items)))
    sidecars = {}
    for name in runs[0][2].sidecars:
        parts = [read_meta(folder, name) for _, folder, _ in runs if find_meta(folder, name) is not None]
        sidecars[name] = combine_sidecar(parts) if all(isinstance(p, dict) for p in parts) else combine_json(parts)
    summary = combine_json([manifest.summary for _, _, manifest in runs])
    return run.finish(sidecars=sidecars, summary={**summary, "merged_from": [str(f) for _, f, _ in runs]})
