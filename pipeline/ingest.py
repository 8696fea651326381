"""The ``ingest`` stage: preference data in a known format -> the ``examples`` table.

Reads a local file, a folder of files (sorted by name) or a Hub dataset;
parses each record with the chosen format; drops bad rows with a reason
(``report.json``) or, with ``strict``, stops at the first; merges rows that
share a ``prompt_id``; writes shards sorted by ``prompt_id``, then the manifest.

The whole input (or, with ``shard="i/N"``, this shard's rows) is held in
memory, since duplicates must be merged across files; split a source larger
than memory with ``--shard`` and ``prefpool merge``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

import pyarrow as pa

from prefpool.pipeline.formats import Format, get_format
from prefpool.pipeline.formats.dedupe import ExampleMerger
from prefpool.pipeline.formats.readers import (
    Record,
    fingerprint,
    load_hub,
    local_files,
    read_hub,
    read_local,
)
from prefpool.pipeline.formats.report import IngestReport
from prefpool.pipeline.formats.rows import BadRow, Columns, MissingColumn
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec, prompt_id
from prefpool.pipeline.io.progress import progress, summary_line
from prefpool.pipeline.io.schemas import EXAMPLES
from prefpool.pipeline.io.stage_run import StageRun, plan_units

STAGE = "ingest"
ROWS_PER_UNIT = 50_000  # ingest is fast; units matter for resuming slow stages


@dataclass(frozen=True)
class IngestConfig:
    """What decides ingest's output (stored in the manifest; a rerun must match it)."""

    source: str = field(metadata={"help": "file, folder of files, or Hub dataset id"})
    format: str = field(metadata={"help": "pairwise | hh-rlhf | ranked | prompts"})
    split: str = field(default="train", metadata={"help": "Hub split"})
    config_name: str | None = field(default=None, metadata={"help": "Hub dataset config name"})
    columns: Columns = field(default_factory=Columns, metadata={"help": "input column names"})
    strict: bool = field(default=False, metadata={"help": "raise on the first bad row instead of dropping it"})


@dataclass(frozen=True)
class IngestSummary:
    out: Path
    rows_written: int
    rows_read: int
    rows_dropped: int
    duplicate_rows_merged: int
    units_written: int
    units_skipped: int
    seconds: float

    def line(self) -> str:
        return summary_line(
            STAGE,
            rows=self.rows_written,
            seconds=self.seconds,
            out=self.out,
            read=self.rows_read,
            dropped=self.rows_dropped,
            merged=self.duplicate_rows_merged,
            units_written=self.units_written,
            units_skipped=self.units_skipped,
        )


def ingest(
    source: str | Path,
    *,
    format: Literal["pairwise", "hh-rlhf", "ranked", "prompts"],
    out: str | Path,
    split: str = "train",
    config_name: str | None = None,
    prompt_column: str | None = None,
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    answers_column: str | None = None,
    text_key: str | None = None,
    rank_key: str = "rank",
    score_key: str = "score",
    model_key: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
    shard: str | ShardSpec | None = None,
    rows_per_unit: int = ROWS_PER_UNIT,
    show_progress: bool | None = None,
) -> IngestSummary:
    """Read preference data into the `examples` table (Parquet shards, manifest.json, report.json).

    Column and key names default to detection from each file's first record
    (see the format modules). Rows that cannot be used are dropped and counted
    in ``report.json`` (``strict=True`` stops at the first one instead).

    Args:
        source: A .jsonl/.json/.parquet/.csv file, a folder of them, or a Hub dataset id.
        format: pairwise | hh-rlhf | ranked | prompts.
        out: Output folder (shards, manifest.json, report.json).
        split: Hub dataset split.
        config_name: Hub dataset config name.
        prompt_column: Prompt column (default: detected).
        chosen_column: pairwise/hh-rlhf: chosen column.
        rejected_column: pairwise/hh-rlhf: rejected column.
        answers_column: ranked: answer list column (default: detected).
        text_key: ranked: text key in each answer (default: detected).
        rank_key: ranked: rank key in each answer.
        score_key: ranked: score key in each answer.
        model_key: ranked: generator key in each answer (default: detected).
        strict: Stop at the first bad row instead of dropping it.
        overwrite: Replace an existing output made with different settings.
        shard: Run only shard i/N of the input (rows whose prompt_id hashes to bucket i); join the N outputs with
            `prefpool merge`.
        rows_per_unit: Rows per work unit: one shard file each, the unit of resuming. Does not change the rows.
        show_progress: Progress bar on stderr; default: when stderr is a terminal.
    """
    start = time.perf_counter()
    fmt = get_format(format)
    spec = ShardSpec.parse(shard)
    columns = Columns(
        prompt=prompt_column,
        chosen=chosen_column,
        rejected=rejected_column,
        answers=answers_column,
        text_key=text_key,
        rank_key=rank_key,
        score_key=score_key,
        model_key=model_key,
    )
    config = IngestConfig(str(source), format, split, config_name, columns, strict)
    records, inputs = _open_source(config)
    run = StageRun(
        out,
        stage=STAGE,
        schema="examples",
        config=asdict(config),
        inputs=inputs,
        shard=spec,
        rows_per_unit=rows_per_unit,
        overwrite=overwrite,
        sources=[source] if Path(source).exists() else [],
    )
    if run.complete:
        manifest = run.finish()
        report = manifest.summary
        return IngestSummary(
            run.out,
            manifest.total_rows,
            report.get("rows_read", 0),
            report.get("rows_dropped", 0),
            report.get("duplicate_rows_merged", 0),
            0,
            len(manifest.shards),
            time.perf_counter() - start,
        )

    report = IngestReport()
    merger = ExampleMerger()
    with progress("ingest: reading", enabled=show_progress) as advance:
        for record in _with_columns(records, fmt, config.columns, report):
            advance(1)
            _ingest_record(record, fmt, report.columns[record.file], spec, strict, report, merger)
    report.duplicate_rows_merged = merger.rows_merged
    report.duplicate_answers_removed = merger.answers_removed

    rows = merger.rows()
    units = plan_units(rows, key_of=lambda r: json.dumps(r, sort_keys=True), rows_per_unit=rows_per_unit)
    todo = run.pending(units)
    with progress("ingest: writing", len(todo), enabled=show_progress, unit="shards") as advance:
        for unit in todo:
            run.write(unit, pa.Table.from_pylist(list(unit.items), schema=EXAMPLES))
            advance(1)
    report_json = report.to_json(rows_written=len(rows))
    counts = {k: report_json[k] for k in ("rows_read", "rows_dropped", "duplicate_rows_merged")}
    run.finish(sidecars={"report.json": report_json}, summary=counts)
    return IngestSummary(
        run.out,
        len(rows),
        report.rows_read,
        report_json["rows_dropped"],
        merger.rows_merged,
        run.units_written,
        run.units_skipped,
        time.perf_counter() - start,
    )


def _open_source(config: IngestConfig) -> tuple[Iterator[Record], object]:
    """The records and a fingerprint of the input (so a changed input is not resumed)."""
    path = Path(config.source)
    if path.exists():
        files = local_files(path)
        records = (record for f in files for record in read_local(f, path))
        return records, fingerprint(files, path)
    dataset = load_hub(config.source, name=config.config_name, split=config.split)
    label = f"{config.source}:{config.config_name or 'default'}:{config.split}"
    return read_hub(dataset, label), {"hub": label, "fingerprint": getattr(dataset, "_fingerprint", None)}


def _with_columns(records: Iterator[Record], fmt: Format, columns: Columns, report: IngestReport):
    """Resolve each file's column names from its first record; a missing column is an error."""
    for record in records:
        if record.file not in report.columns:
            try:
                resolved = fmt.resolve(record.data, columns)
            except MissingColumn as missing:
                hint = f" ({missing.hint})" if missing.hint else ""
                raise PipelineInputError(
                    f"missing column for format {fmt.name!r}{hint}", file=record.file, column=missing.column
                ) from None
            report.columns[record.file] = resolved
        yield record


def _ingest_record(
    record: Record,
    fmt: Format,
    columns: Columns,
    spec: ShardSpec,
    strict: bool,
    report: IngestReport,
    merger: ExampleMerger,
) -> None:
    try:
        parsed = fmt.parse(record.data, columns)
    except BadRow as bad:
        if strict:
            _raise(bad, record)
        # no prompt_id for a bad row: its location decides which shard run counts it
        if spec.owns(f"{record.source}:{record.row}"):
            report.rows_read += 1
            report.drop(bad, record)
        return
    pid = prompt_id(parsed.prompt)
    if strict and parsed.dropped_answers:
        _raise(parsed.dropped_answers[0], record)
    if not spec.owns(pid):
        return
    report.rows_read += 1
    for bad in parsed.dropped_answers:
        report.drop(bad, record, answer=True)
    merger.add(pid, parsed, record.source)


def _raise(bad: BadRow, record: Record) -> NoReturn:
    detail = f": {bad.detail}" if bad.detail else ""
    raise PipelineInputError(
        f"{bad.reason}{detail}", file=record.file, row=record.row, column=bad.column, line=record.line
    )
