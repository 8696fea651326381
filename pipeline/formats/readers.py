"""Records from a local file, a folder of files, or a Hugging Face Hub dataset.

Every record carries where it came from (file, 0-based row, 1-based line for
text files) so that errors and the drop report can point at it. Parsing errors
(bad JSON line, truncated Parquet) raise ``PipelineInputError`` naming the file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.manifest import file_sha256

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
BATCH_ROWS = 1024


@dataclass(frozen=True)
class Record:
    file: str  # the path for messages
    source: str  # the short name stored in the `source` column
    row: int  # 0-based within the file
    line: int | None  # 1-based, text files only
    data: dict


def local_files(source: Path) -> list[Path]:
    """The file itself, or the folder's data files in sorted name order (not recursive)."""
    if source.is_file():
        if source.suffix not in SUFFIXES:
            raise PipelineInputError(f"unsupported file type; expected one of {SUFFIXES}", file=source)
        return [source]
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise PipelineInputError(f"folder holds no {'/'.join(SUFFIXES)} files", file=source)
    return files


def fingerprint(files: list[Path], base: Path) -> list[dict]:
    return [{"file": _short(f, base), "bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in files]


def _short(path: Path, base: Path) -> str:
    return path.name if base.is_file() else str(path.relative_to(base))


def read_local(path: Path, base: Path) -> Iterator[Record]:
    short = _short(path, base)
    readers = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet, ".csv": _csv}
    for row, line, data in readers[path.suffix](path):
        yield Record(str(path), short, row, line, data)


def _object(data: object, path: Path, row: int, line: int | None) -> dict:
    if not isinstance(data, dict):
        raise PipelineInputError(f"expected a JSON object, got {type(data).__name__}", file=path, row=row, line=line)
    return data


def _jsonl(path: Path) -> Iterator[tuple[int, int | None, dict]]:
    row = 0
    with open(path, encoding="utf-8") as handle:
        lineno = 0
        while True:
            try:
                text = handle.readline()
            except UnicodeDecodeError as exc:
                raise PipelineInputError(f"not UTF-8: {exc}", file=path, row=row, line=lineno + 1) from exc
            if not text:
                return
            lineno += 1
            if not text.strip():
                continue  # blank lines are not rows
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PipelineInputError(f"invalid JSON: {exc.msg}", file=path, row=row, line=lineno) from exc
            yield row, lineno, _object(data, path, row, lineno)
            row += 1


def _json(path: Path) -> Iterator[tuple[int, int | None, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name
            yield from _jsonl(path)
            return
        raise PipelineInputError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    except UnicodeDecodeError as exc:
        raise PipelineInputError(f"not UTF-8: {exc}", file=path) from exc
    if not isinstance(data, list):
        raise PipelineInputError("expected a JSON list of objects (or one object per line)", file=path)
    for row, item in enumerate(data):
        yield row, None, _object(item, path, row, None)


def _parquet(path: Path) -> Iterator[tuple[int, int | None, dict]]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PipelineInputError(f"not a readable Parquet file (truncated or corrupt?): {exc}", file=path) from exc
    row = 0
    for group in range(parquet.num_row_groups):
        try:
            batch = parquet.read_row_group(group)
        except (pa.ArrowException, OSError) as exc:
            raise PipelineInputError(f"cannot read row group {group} (corrupt?): {exc}", file=path, row=row) from exc
        for data in batch.to_pylist():
            yield row, None, data
            row += 1


def _csv(path: Path) -> Iterator[tuple[int, int | None, dict]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        row = 0
        try:
            for data in reader:
                yield row, reader.line_num, data
                row += 1
        except (csv.Error, UnicodeDecodeError) as exc:
            raise PipelineInputError(f"cannot parse CSV: {exc}", file=path, row=row, line=reader.line_num) from exc


def load_hub(dataset_id: str, *, name: str | None, split: str):
    """``datasets.load_dataset(dataset_id, name=name, split=split)``; imported here only (slow)."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, name=name, split=split)
    except Exception as exc:  # the Hub raises many types; the user needs the message, not the type
        raise PipelineInputError(
            f"not a local file or folder, and loading it as a Hub dataset failed: {type(exc).__name__}: {exc}",
            file=dataset_id,
        ) from exc


def read_hub(dataset, label: str) -> Iterator[Record]:
    for row, data in enumerate(dataset):
        yield Record(label, label, row, None, data)
