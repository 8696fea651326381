"""Where a stage's output folder keeps its files: Parquet shards on top, prefpool's own files hidden.

A stage output is a folder that ``datasets.load_dataset(folder)`` and
``load_dataset("parquet", data_dir=folder)`` load as it is: only the Parquet
shards sit at the top. ``datasets`` (5.x, ``data_files.resolve_pattern``) skips
every file inside a folder whose name starts with a dot unless the pattern
names it, so the manifest, the run's identity and the reports live in
``.prefpool/``:

    out/part-00000-of-00001-00000.parquet   the table (one shard per work unit)
    out/.prefpool/run.json                  the run's identity, written first
    out/.prefpool/report.json               sidecars (report of dropped rows, ...)
    out/.prefpool/manifest.json             written last: the output is complete

Folders written before this layout (``manifest.json``, ``run.json``,
``report.json`` beside the shards) stay readable: ``find_meta`` looks in
``.prefpool/`` first, then at the top. A rerun of the stage with the same
settings moves them (``migrate_legacy``). Every reader and writer asks this
module for the paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefpool.core.bounded import BoundsError, loads_json
from prefpool.pipeline.io.errors import PipelineInputError

META_DIR = ".prefpool"
MANIFEST = "manifest.json"
RUN_MARKER = "run.json"
REPORT = "report.json"
SIDECARS = (REPORT,)  # the only sidecar files a manifest may list
LOCK = "lock"  # the writer's lock (``writer_lock``)


def meta_dir(folder: str | Path) -> Path:
    return Path(folder) / META_DIR


def meta_path(folder: str | Path, name: str) -> Path:
    """Where the file ``name`` (manifest, run marker, a sidecar) of the output ``folder`` is written."""
    return meta_dir(folder) / name


def find_meta(folder: str | Path, name: str) -> Path | None:
    """The file ``name`` of ``folder``: in ``.prefpool/``, else at the top (the layout before), else None."""
    for path in (meta_path(folder, name), Path(folder) / name):
        if path.is_file():
            return path
    return None


def read_meta(folder: str | Path, name: str) -> object:
    """The JSON file ``name`` of the output ``folder`` (e.g. ``read_meta(out, REPORT)``)."""
    path = find_meta(folder, name)
    if path is None:
        raise PipelineInputError(f"no {name} (looked in {META_DIR}/ and at the top)", file=folder)
    return read_json_file(path, name)


def read_json_file(path: Path, what: str) -> object:
    """The JSON in ``path``; a file that is not UTF-8 JSON is a ``PipelineInputError`` naming it."""
    try:
        return loads_json(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineInputError(f"unreadable {what} (not UTF-8 JSON: {exc})", file=path) from exc
    except BoundsError as exc:
        raise PipelineInputError(f"unreadable {what}: the JSON is {exc}", file=path) from None


def legacy_files(folder: str | Path) -> list[Path]:
    """prefpool's own JSON files lying beside the shards (the layout before ``.prefpool/``)."""
    folder = Path(folder)
    names = [RUN_MARKER, REPORT, MANIFEST]
    if (folder / MANIFEST).is_file():
        try:
            listed = json.loads((folder / MANIFEST).read_text()).get("sidecars", [])
            names[2:2] = [name for name in listed if name in SIDECARS]
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
            pass
    return [folder / n for n in dict.fromkeys(names) if (folder / n).is_file()]


def migrate_legacy(folder: str | Path) -> list[str]:
    """Move the files of the layout before into ``.prefpool/``; return their names.

    Each move is one ``os.replace`` and the manifest moves last, so a reader
    (``find_meta`` looks in both places) finds every file at every moment.
    """
    files = legacy_files(folder)
    if not files:
        return []
    meta_dir(folder).mkdir(exist_ok=True)
    for path in files:  # the manifest is last in legacy_files
        os.replace(path, meta_path(folder, path.name))
    return [p.name for p in files]
