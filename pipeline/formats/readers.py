"""Records from one data file: JSON Lines, JSON, CSV, Parquet or Arrow, text formats also compressed.

Every record carries where it came from (file, 0-based row, 1-based line for
text files) so that errors and the drop report can point at it. A file that
cannot be read (undecodable bytes, bad JSON, a truncated Parquet file, corrupt
compression) raises ``PipelineInputError`` naming the file, and the row and
line where reading stopped. Text is decoded line by line, so a bad byte is
reported at its own line; a UTF-8 byte-order mark at the start is skipped.
Files are opened through ``fsspec``, so a path may also be a URL
(``https://``, ``s3://``, ``hf://``, ...).
"""

from __future__ import annotations

import csv
import io
import json
import lzma
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from prefpool.core.bounded import BoundsError, loads_json
from prefpool.pipeline.io.errors import PipelineInputError

TEXT_SUFFIXES = (".jsonl", ".json", ".csv")
SUFFIXES = (*TEXT_SUFFIXES, ".parquet", ".arrow")
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
BATCH_ROWS = 1024
BOM = "\ufeff"


@dataclass(frozen=True)
class Record:
    file: str  # the path for messages
    source: str  # the short name stored in the `source` column
    row: int  # 0-based within the file
    line: int | None  # 1-based, text files only
    data: dict


def file_kind(name: str) -> tuple[str, str | None] | None:
    """``"train.jsonl.gz"`` -> ``(".jsonl", "gzip")``; ``None`` for a file ingest does not read.

    A URL's query string (``data.jsonl?token=...``, a signed URL) is not part of its file name."""
    lower = (name.split("?", 1)[0] if "://" in name else name).lower()
    compression = next((c for ext, c in COMPRESSIONS.items() if lower.endswith(ext)), None)
    if compression is not None:
        lower = lower.rsplit(".", 1)[0]
    suffix = next((s for s in SUFFIXES if lower.endswith(s)), None)
    if suffix is None or (compression is not None and suffix not in TEXT_SUFFIXES):
        return None
    return suffix, compression


def check_readable(path: str) -> tuple[str, str | None]:
    kind = file_kind(path)
    if kind is None:
        compressed = " (compressed Parquet/Arrow: decompress it first)" if _has_compression(path) else ""
        raise PipelineInputError(
            f"unsupported file type{compressed}; expected {'/'.join(SUFFIXES)}, text formats also as "
            + "/".join(COMPRESSIONS),
            file=path,
        )
    return kind


def _has_compression(path: str) -> bool:
    return any(path.lower().endswith(ext) for ext in COMPRESSIONS)


def read_file(path: str, short: str) -> Iterator[Record]:
    """The records of one file; ``short`` is the name stored in the ``source`` column."""
    suffix, compression = check_readable(path)
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet, ".arrow": _arrow}
    with _open(path, compression) as stream:
        for row, line, data in readers[suffix](stream, path):
            yield Record(path, short, row, line, data)


@contextmanager
def _open(path: str, compression: str | None) -> Iterator[BinaryIO]:
    try:
        if compression is None and "://" not in path:
            handle = open(path, "rb")  # closed below; a plain file reads faster than fsspec's wrapper
        else:
            handle = fsspec.open(path, "rb", compression=compression).open()
    except OSError as exc:
        raise PipelineInputError(f"cannot open: {exc}", file=path) from exc
    try:
        # the zstd reader has no readline; a buffer gives every codec one
        yield io.BufferedReader(handle) if compression is not None else handle
    finally:
        handle.close()


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, lzma.LZMAError]
    zstd = sys.modules.get("zstandard")
    if zstd is not None:
        errors.append(zstd.ZstdError)
    return tuple(errors)


def _next_line(stream: BinaryIO, path: str, row: int, line: int) -> bytes:
    try:
        return stream.readline()
    except _decompression_errors() as exc:
        raise PipelineInputError(f"cannot read (corrupt or truncated?): {exc}", file=path, row=row, line=line) from exc


def _decode(raw: bytes, path: str, row: int, line: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineInputError(
            f"not UTF-8: byte {raw[exc.start]:#04x} at character {exc.start + 1} of the line; "
            "re-encode the file as UTF-8",
            file=path,
            row=row,
            line=line,
        ) from None
    return text.removeprefix(BOM) if line == 1 else text


def _object(data: object, path: str, row: int, line: int | None) -> dict:
    if not isinstance(data, dict):
        raise PipelineInputError(f"expected a JSON object, got {type(data).__name__}", file=path, row=row, line=line)
    return data


def _jsonl(stream: BinaryIO, path: str) -> Iterator[tuple[int, int | None, dict]]:
    row, line = 0, 0
    while raw := _next_line(stream, path, row, line + 1):
        line += 1
        text = _decode(raw, path, row, line)
        if not text.strip():
            continue  # blank lines are not rows
        try:
            data = loads_json(text)
        except json.JSONDecodeError as exc:
            raise PipelineInputError(f"invalid JSON: {exc.msg}", file=path, row=row, line=line) from None
        except BoundsError as exc:
            raise PipelineInputError(f"the JSON is {exc}", file=path, row=row, line=line) from None
        yield row, line, _object(data, path, row, line)
        row += 1


def _json(stream: BinaryIO, path: str) -> Iterator[tuple[int, int | None, dict]]:
    try:
        raw = stream.read()
    except _decompression_errors() as exc:
        raise PipelineInputError(f"cannot read (corrupt or truncated?): {exc}", file=path) from exc
    try:
        text = raw.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PipelineInputError(f"not UTF-8: byte {raw[exc.start]:#04x}", file=path, line=line) from None
    try:
        data = loads_json(text)
    except BoundsError as exc:
        raise PipelineInputError(f"the JSON is {exc}", file=path) from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name
            yield from _jsonl(io.BytesIO(raw), path)
            return
        raise PipelineInputError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from None
    if not isinstance(data, list):
        raise PipelineInputError("expected a JSON list of objects (or one object per line)", file=path)
    for row, item in enumerate(data):
        yield row, None, _object(item, path, row, None)


class _Lines:
    """Decoded lines for ``csv.reader``, counting them so errors can name the line."""

    def __init__(self, stream: BinaryIO, path: str) -> None:
        self.stream, self.path, self.line, self.row = stream, path, 0, 0

    def __iter__(self) -> Iterator[str]:
        while raw := _next_line(self.stream, self.path, self.row, self.line + 1):
            self.line += 1
            yield _decode(raw, self.path, self.row, self.line)


def _csv(stream: BinaryIO, path: str) -> Iterator[tuple[int, int | None, dict]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # completions can be longer than the 128 KiB default
    lines = _Lines(stream, path)
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise PipelineInputError(f"cannot parse the CSV header: {exc}", file=path, line=lines.line) from None
    if header is None:
        return
    duplicate = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if duplicate is not None or "" in header:
        what = f"column {duplicate!r} appears twice" if duplicate is not None else "a column has no name"
        raise PipelineInputError(f"bad CSV header: {what}", file=path, line=1)
    while True:
        start = lines.line + 1
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            raise PipelineInputError(f"cannot parse CSV: {exc}", file=path, row=lines.row, line=start) from None
        if fields is None:
            return
        if not fields:
            continue  # a blank line
        if len(fields) != len(header):
            raise PipelineInputError(
                f"{len(fields)} fields where the header has {len(header)}", file=path, row=lines.row, line=start
            )
        yield lines.row, start, dict(zip(header, fields, strict=True))
        lines.row += 1


def _parquet(stream: BinaryIO, path: str) -> Iterator[tuple[int, int | None, dict]]:
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as exc:
        raise PipelineInputError(f"not a readable Parquet file (truncated or corrupt?): {exc}", file=path) from exc
    yield from _batches(parquet.iter_batches(batch_size=BATCH_ROWS), path, "Parquet")


def _arrow(stream: BinaryIO, path: str) -> Iterator[tuple[int, int | None, dict]]:
    """An Arrow IPC stream (what ``datasets`` writes) or, failing that, an IPC file."""
    try:
        batches = iter(pa.ipc.open_stream(stream))
    except (pa.ArrowException, OSError):
        try:
            stream.seek(0)
            reader = pa.ipc.open_file(stream)
        except (pa.ArrowException, OSError, io.UnsupportedOperation) as exc:
            raise PipelineInputError(f"not a readable Arrow file (truncated or corrupt?): {exc}", file=path) from exc
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    yield from _batches(batches, path, "Arrow")


def _batches(batches: Iterator[pa.RecordBatch], path: str, kind: str) -> Iterator[tuple[int, int | None, dict]]:
    row = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise PipelineInputError(f"cannot read {kind} data (corrupt?): {exc}", file=path, row=row) from exc
        if batch is None:
            return
        for data in batch.to_pylist():
            yield row, None, data
            row += 1
