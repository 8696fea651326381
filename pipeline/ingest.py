"""The ``ingest`` stage: preference data in any common shape -> the ``examples`` table.

Reads a data file (JSON Lines, JSON, CSV, Parquet, Arrow; text formats also
``.gz``/``.bz2``/``.xz``/``.zst``), a folder (recursively, split as the Hub
splits a dataset repository), a glob, a URL, a Hub dataset id, or a
``datasets`` object (see ``formats/sources.py``); picks one split; tells the
format from the first record unless it is given (``formats/detect.py``);
parses each record (``formats/<format>.py``); drops bad rows with a reason
(``report.json``) or, with ``strict``, stops at the first; merges rows that
share a ``prompt_id``; writes shards sorted by ``prompt_id``, then the manifest.

Loss is never silent: when no row can be used, nothing is written and the
error names the top reasons; when more than 10 % of the rows are dropped, or
score-like columns or data files are left unread, a ``DroppedRowsWarning``
says so.

The whole input (or, with ``shard="i/N"``, this shard's rows) is held in
memory, since duplicates must be merged across files; split a source larger
than memory with ``--shard`` and ``prefpool merge``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import pyarrow as pa

from prefpool.core.errors import UserError
from prefpool.pipeline.formats import AUTO, FORMATS, Format, get_format
from prefpool.pipeline.formats.dedupe import ExampleMerger
from prefpool.pipeline.formats.detect import UnclearFormat, detect
from prefpool.pipeline.formats.readers import Record
from prefpool.pipeline.formats.report import DroppedRowsWarning, IngestReport
from prefpool.pipeline.formats.rows import BadRow, Columns, MissingColumn, parse_columns
from prefpool.pipeline.formats.sources import Source, open_source
from prefpool.pipeline.formats.split_slice import SplitSlice, parse_split
from prefpool.pipeline.io.card_fields import check_languages, check_license, check_repo_id
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import ShardSpec, prompt_id
from prefpool.pipeline.io.layout import META_DIR, RUN_MARKER, meta_dir
from prefpool.pipeline.io.progress import progress, summary_line
from prefpool.pipeline.io.schemas import EXAMPLES
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.io.writer_lock import writes_folder

STAGE = "ingest"
ROWS_PER_UNIT = 50_000  # ingest is fast; units matter for resuming slow stages
# Unread columns with these words in their names probably hold preferences: say so.
SCORE_LIKE = re.compile(r"score|rating|reward|rank|label|prefer", re.IGNORECASE)

# A datasets.Dataset, DatasetDict, IterableDataset or IterableDatasetDict (datasets is imported only for one).
DatasetObject = Any


@dataclass(frozen=True)
class IngestConfig:
    """What decides ingest's output (stored in the manifest; a rerun must match it)."""

    source: str = field(metadata={"help": "file, folder, glob, URL, Hub dataset id, or datasets object"})
    format: str = field(metadata={"help": "auto | " + " | ".join(FORMATS)})
    split: str | None = field(default=None, metadata={"help": "the split asked for (None: the default)"})
    subset: str | None = field(default=None, metadata={"help": "Hub dataset config / README subset"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision"})
    columns: Columns = field(default_factory=Columns, metadata={"help": "input column names"})
    strict: bool = field(default=False, metadata={"help": "raise on the first bad row instead of dropping it"})
    # What the rows are, for the dataset card `push` writes; kept in the identity only when given, so
    # outputs made before these fields existed still match a rerun that gives none.
    source_dataset: str | None = field(default=None, metadata={"help": "Hub id the rows come from"})
    license: str | None = field(default=None, metadata={"help": "licence of the source data"})
    language: tuple[str, ...] = field(default=(), metadata={"help": "language codes of the texts"})

    def identity(self) -> dict:
        config = asdict(self)
        for key in CARD_KEYS:
            if not config[key]:
                del config[key]
        if "language" in config:
            config["language"] = list(config["language"])
        return config


CARD_KEYS = ("source_dataset", "license", "language")


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
    format: str = ""  # the format read (detected, for format="auto")
    split: str | None = None

    def line(self) -> str:
        return summary_line(
            STAGE,
            rows=self.rows_written,
            seconds=self.seconds,
            out=self.out,
            format=self.format,
            split=self.split,
            read=self.rows_read,
            dropped=self.rows_dropped,
            merged=self.duplicate_rows_merged,
            units_written=self.units_written,
            units_skipped=self.units_skipped,
        )


@writes_folder(lambda a: a["out"], command="ingest")
def ingest(
    source: str | Path | DatasetObject,
    *,
    out: str | Path,
    format: Literal["auto", "pairwise", "hh-rlhf", "ranked", "ultrafeedback", "prompts"] = "auto",
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
    columns: str | dict[str, str] | None = None,
    config_name: str | None = None,
    prompt_column: str | None = None,
    chosen_column: str | None = None,
    rejected_column: str | None = None,
    answers_column: str | None = None,
    text_key: str | None = None,
    rank_key: str | None = None,
    score_key: str | None = None,
    model_key: str | None = None,
    strict: bool = False,
    source_dataset: str | None = None,
    license: str | None = None,
    language: list[str] | None = None,
    overwrite: bool = False,
    shard: str | ShardSpec | None = None,
    rows_per_unit: int = ROWS_PER_UNIT,
    show_progress: bool | None = None,
) -> IngestSummary:
    """Read preference data into the `examples` table (Parquet shards; manifest.json, report.json in .prefpool/).

    The format and the column names default to detection from the input's first
    record (see the format modules). Rows that cannot be used are dropped and
    counted in ``report.json`` (``strict=True`` stops at the first one instead);
    when none can be used, nothing is written and the error names the reasons.

    Args:
        source: A data file (.jsonl/.json/.csv, also .gz/.bz2/.xz/.zst; .parquet/.arrow), a folder (read
            recursively, Hub split naming), a glob, a URL, a Hub dataset id, or (from Python) a datasets object.
        out: Output folder (shards; manifest.json and report.json in its .prefpool/).
        format: The input format; auto: told from the first record (the summary and report.json name it).
        split: Split to read; default: the only one, else train. A row range as datasets writes it reads only
            those records: train[:24], train[10:34].
        subset: Hub dataset config (datasets' name=), or a config of a folder's README.md.
        revision: Hub dataset revision (branch, tag or commit).
        columns: Column names as KEY=COLUMN,... with keys prompt, chosen, rejected, answers, text, rank,
            score, model, score_chosen, score_rejected, model_chosen, model_rejected, metadata.
        config_name: Same as --subset (kept for older callers).
        prompt_column: Same as --columns prompt=NAME.
        chosen_column: Same as --columns chosen=NAME.
        rejected_column: Same as --columns rejected=NAME.
        answers_column: Same as --columns answers=NAME (ranked: the answer list).
        text_key: Same as --columns text=KEY (the text key in each answer).
        rank_key: Same as --columns rank=KEY (the rank key in each answer).
        score_key: Same as --columns score=KEY (the score key in each answer; ultrafeedback: overall_score,
            fine-grained_score or an aspect such as helpfulness).
        model_key: Same as --columns model=KEY (the generator key in each answer).
        strict: Stop at the first bad row (or NaN/infinite score) instead of dropping it.
        source_dataset: Hub id the rows come from (owner/name), for the card `push` writes (a Hub SOURCE
            names itself).
        license: Licence of the source data (e.g. mit, cc-by-4.0), for the card `push` writes (default: the
            Hub dataset's own, when SOURCE is one).
        language: Language code of the texts (e.g. en), for the card `push` writes; repeat for several.
        overwrite: Replace an existing output made with different settings.
        shard: Run only shard i/N of the input (rows whose prompt_id hashes to bucket i); join the N outputs with
            `prefpool merge`.
        rows_per_unit: Rows per work unit: one shard file each, the unit of resuming. Does not change the rows.
        show_progress: Progress bar on stderr; default: when stderr is a terminal.
    """
    start = time.perf_counter()
    if format != AUTO:
        get_format(format)
    spec = ShardSpec.parse(shard)
    subset = _subset(subset, config_name)
    cols = _columns(
        columns,
        prompt=prompt_column,
        chosen=chosen_column,
        rejected=rejected_column,
        answers=answers_column,
        text=text_key,
        rank=rank_key,
        score=score_key,
        model=model_key,
    )
    card = _card_fields(source_dataset, license, language)
    rows_range = parse_split(split)
    src = open_source(source, split=rows_range.name, subset=subset, revision=revision)
    config = IngestConfig(src.label, format, split, subset, revision, cols, strict, *card)
    plan = _Plan(out, source, spec, rows_range, rows_per_unit, overwrite, show_progress)
    run, state = _read_in_run(src, config, plan)
    if state is None:
        return _complete_summary(run, start)
    rows = _write_examples(run, state, plan)
    return _finish_run(run, state, src, rows, start)


@dataclass(frozen=True)
class _Plan:
    """How one ``ingest`` call runs, beside what decides its rows (``IngestConfig``)."""

    out: str | Path
    source: object  # the caller's source: a local one must not be the output folder
    spec: ShardSpec
    rows_range: SplitSlice
    rows_per_unit: int
    overwrite: bool
    show_progress: bool | None


def _subset(subset: str | None, config_name: str | None) -> str | None:
    """``subset``, or ``config_name`` (its older name); both given must agree."""
    if config_name is not None and subset is not None and config_name != subset:
        raise PipelineConfigError(f"subset={subset!r} and config_name={config_name!r} disagree; give one")
    return subset if subset is not None else config_name


def _card_fields(source_dataset: str | None, license: str | None, language: list[str] | None) -> tuple:
    """What the rows are, for the card ``push`` writes, checked: (source_dataset, license, languages)."""
    return (
        check_repo_id(source_dataset, "source_dataset", owner=True),
        check_license(license),
        tuple(check_languages(language)),
    )


def _read_in_run(src: Source, config: IngestConfig, plan: _Plan) -> tuple[StageRun, _ReadState | None]:
    """Open the stage run and read the source into merged rows; no ``_ReadState`` when the run is complete.

    A source with a fingerprint opens the run first (a complete run is not read again) and a failed read
    takes away what the run created; one without (an IterableDataset) is read first: its rows' hash is
    the run's input identity."""

    def read() -> _ReadState:
        return _read(src, config.format, config.columns, plan.spec, config.strict, plan.show_progress, plan.rows_range)

    if src.inputs is not None:
        run, fresh = _open_run(config, src.inputs, plan)
        if run.complete:
            return run, None
        try:
            return run, read()
        except UserError:
            _discard(run, fresh)
            raise
    state = read()
    run, _ = _open_run(config, {"rows_sha256": state.digest}, plan)
    return run, (None if run.complete else state)


def _write_examples(run: StageRun, state: _ReadState, plan: _Plan) -> list[dict]:
    """The merged rows, written as the run's pending units; the report counts what merging removed."""
    report, merger = state.report, state.merger
    report.duplicate_rows_merged = merger.rows_merged
    report.duplicate_answers_removed = merger.answers_removed
    rows = merger.rows()
    units = plan_units(rows, key_of=lambda r: json.dumps(r, sort_keys=True), rows_per_unit=plan.rows_per_unit)
    todo = run.pending(units)
    with progress("ingest: writing", len(todo), enabled=plan.show_progress, unit="shards") as advance:
        for unit in todo:
            run.write(unit, pa.Table.from_pylist(list(unit.items), schema=EXAMPLES))
            advance(1)
    return rows


def _finish_run(run: StageRun, state: _ReadState, src: Source, rows: list[dict], start: float) -> IngestSummary:
    """Write report.json and the manifest, warn about what was not read, and sum the run up."""
    report = state.report
    report_json = report.to_json(rows_written=len(rows))
    counts = {k: report_json[k] for k in ("rows_read", "rows_dropped", "duplicate_rows_merged")}
    run.finish(sidecars={"report.json": report_json}, summary={**counts, "format": state.format, "split": src.split})
    for message in state.warnings:
        warnings.warn(message, DroppedRowsWarning, stacklevel=3)
    return IngestSummary(
        run.out,
        len(rows),
        report.rows_read,
        report_json["rows_dropped"],
        state.merger.rows_merged,
        run.units_written,
        run.units_skipped,
        time.perf_counter() - start,
        state.format,
        src.split,
    )


def _columns(spec: str | dict[str, str] | None, **flags: str | None) -> Columns:
    """``--columns`` and the older one-name flags, which must agree where both are given."""
    names = parse_columns(spec)
    for key, value in flags.items():
        if value is None:
            continue
        if names.get(key, value) != value:
            raise PipelineConfigError(f"--columns {key}={names[key]} and the {key} flag ({value!r}) disagree")
        names[key] = value
    return Columns(**names)


def _open_run(config: IngestConfig, inputs: object, plan: _Plan) -> tuple[StageRun, bool]:
    """The stage run, and whether this call created its folder (so a failed read can take it away)."""
    existed = Path(plan.out).exists()
    source = plan.source
    run = StageRun(
        plan.out,
        stage=STAGE,
        schema="examples",
        config=config.identity(),
        inputs=inputs,
        shard=plan.spec,
        rows_per_unit=plan.rows_per_unit,
        overwrite=plan.overwrite,
        # a local source must not be the output folder (a datasets object or a Hub id has no path)
        sources=[source] if isinstance(source, (str, Path)) and Path(source).exists() else [],
    )
    return run, not existed


def _discard(run: StageRun, created: bool) -> None:
    """After a failed read: remove the run marker (and the folder this run created) if nothing else is there.

    ``StageRun`` writes nothing before its first shard, so usually there is nothing to remove."""
    if not run.work.exists() or {p.name for p in run.work.iterdir()} != {META_DIR}:
        return
    if {p.name for p in meta_dir(run.work).iterdir()} != {RUN_MARKER}:
        return
    if created or run.work != run.out:  # a folder made by this call, or the staging folder of an overwrite
        shutil.rmtree(run.work)
    else:
        shutil.rmtree(meta_dir(run.work))


def _complete_summary(run: StageRun, start: float) -> IngestSummary:
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
        report.get("format", ""),
        report.get("split"),
    )


@dataclass
class _ReadState:
    report: IngestReport
    merger: ExampleMerger
    format: str
    digest: str
    warnings: list[str]


def _read(
    src: Source, requested: str, cols: Columns, spec: ShardSpec, strict: bool, show_progress, rows_range: SplitSlice
) -> _ReadState:
    """Parse every record of the source in ``rows_range``; raise when none can be used."""
    report, merger = IngestReport(), ExampleMerger()
    digest = hashlib.sha256()
    fmt: Format | None = None
    usable = 0
    with progress("ingest: reading", enabled=show_progress) as advance:
        for index, record in enumerate(src.records()):
            if rows_range.done(index):
                break
            if not rows_range.takes(index):
                continue
            advance(1)
            if src.inputs is None:
                digest.update(json.dumps(record.data, sort_keys=True, default=str).encode("utf-8") + b"\n")
            if fmt is None:
                fmt = _choose_format(requested, record, cols)
            if record.file not in report.columns:
                _resolve(record, fmt, cols, report)
            usable += _ingest_record(record, fmt, report.columns[record.file], spec, strict, report, merger)
    report.inputs = {
        "format": fmt.name if fmt else requested,
        "format_requested": requested,
        "split": src.split,
        "splits_found": list(src.splits),
        "files_in_no_split": list(src.ignored),
    }
    if usable == 0:
        raise PipelineInputError(report.no_rows_message(), file=src.label)
    assert fmt is not None
    return _ReadState(report, merger, fmt.name, digest.hexdigest(), _warnings(report, src))


def _choose_format(requested: str, record: Record, cols: Columns) -> Format:
    if requested != AUTO:
        return get_format(requested)
    try:
        return get_format(detect(record.data, cols))
    except UnclearFormat as unclear:
        raise PipelineInputError(f"cannot tell the input format: {unclear}", file=record.file) from None


def _resolve(record: Record, fmt: Format, cols: Columns, report: IngestReport) -> None:
    """Resolve a file's column names from its first record; a missing column is an error naming the file."""
    try:
        resolved = fmt.resolve(record.data, cols)
    except MissingColumn as missing:
        hint = f" ({missing.hint})" if missing.hint else ""
        found = ", ".join(map(repr, record.data)) or "none"
        raise PipelineInputError(
            f"missing column for format {fmt.name!r}{hint}; the columns of this file are: {found} "
            "(name them with --columns KEY=COLUMN,...)",
            file=record.file,
            column=missing.column,
        ) from None
    report.columns[record.file] = resolved
    report.unused_columns[record.file] = sorted(set(record.data) - resolved.top_level())


def _warnings(report: IngestReport, src: Source) -> list[str]:
    messages = []
    dropped = report.dropped_warning()
    if dropped:
        messages.append(dropped)
    score_like = sorted({c for cs in report.unused_columns.values() for c in cs if SCORE_LIKE.search(c)})
    if score_like:
        messages.append(
            f"columns that look like scores or preferences were not read: {', '.join(score_like)}; "
            "map them with --columns (e.g. score_chosen=NAME,score_rejected=NAME)"
        )
    if src.ignored:
        shown = ", ".join(src.ignored[:5]) + (", ..." if len(src.ignored) > 5 else "")
        messages.append(f"{len(src.ignored)} data files of {src.label} are in no split and were not read: {shown}")
    return messages


def _ingest_record(
    record: Record,
    fmt: Format,
    columns: Columns,
    spec: ShardSpec,
    strict: bool,
    report: IngestReport,
    merger: ExampleMerger,
) -> int:
    """Parse one record into the merger (if this shard owns it); 1 if it was usable, in any shard."""
    try:
        parsed = fmt.parse(record.data, columns)
    except BadRow as bad:
        if strict:
            _raise(bad, record)
        # no prompt_id for a bad row: its location decides which shard run counts it
        if spec.owns(f"{record.source}:{record.row}"):
            report.rows_read += 1
            report.drop(bad, record)
        return 0
    if strict and (parsed.dropped_answers or parsed.issues):
        _raise((parsed.dropped_answers or parsed.issues)[0], record)
    pid = prompt_id(parsed.prompt)
    if not spec.owns(pid):
        return 1
    report.rows_read += 1
    for bad in parsed.dropped_answers:
        report.drop(bad, record, what="answer")
    for bad in parsed.issues:
        report.drop(bad, record, what="value")
    merger.add(pid, parsed, record.source)
    return 1


def _raise(bad: BadRow, record: Record) -> NoReturn:
    detail = f": {bad.detail}" if bad.detail else ""
    raise PipelineInputError(
        f"{bad.reason}{detail}", file=record.file, row=record.row, column=bad.column, line=record.line
    )
