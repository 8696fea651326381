"""``push``: a pipeline table -> a Hub-ready dataset folder, optionally uploaded.

The folder holds ``data/<split>-NNNNN-of-NNNNN.parquet`` (one file per source
shard, rows in the same order, cast to the code's schema) and ``README.md``
(``card.render_card``). Without ``dry_run`` the folder is uploaded with
``huggingface_hub``; the token is whatever huggingface_hub resolves itself
(``HF_TOKEN``, ``huggingface-cli login``): prefpool never reads, prints or
writes it, and the card is redacted (``prefpool.core.secrets``) like every
other file. The repo id is checked with the Hub client's own rules
(``validate_repo_id``) before anything is written, in a dry run too.

An ``--out`` folder is built as a whole in a sibling staging folder and moved
into place when complete, so a killed or failed push never leaves a
half-written folder under the final name. Beside it, ``<out>.push.json``
records what the folder holds (the push's settings and the source manifest's
sha256), written before the build (``complete: false``) and after it:

- the same push again over a complete folder is a no-op that says so
  (``PushSummary.up_to_date``);
- a push with other settings or another source over a folder it made is
  refused unless ``overwrite``; an unfinished one (killed mid-way) is redone;
- a non-empty folder without a record is not replaced (``overwrite`` replaces
  only a folder that holds nothing but ``README.md`` and ``data/*.parquet``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from prefpool.core.outputs import check_folder, writing
from prefpool.core.secrets import redact_text
from prefpool.pipeline.io.atomic import atomic_path, write_json, write_text
from prefpool.pipeline.io.card import render_card
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.manifest import MANIFEST_NAME, file_sha256, read_json_file
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.schemas import get_schema
from prefpool.pipeline.io.shards import COMPRESSION, ROW_GROUP_ROWS, read_shard

TRAINING_TABLES = ("pairwise", "mcpo", "mpo")
RECORD_SUFFIX = ".push.json"


@dataclass(frozen=True)
class PushSummary:
    folder: Path
    files: list[str]
    rows: int
    uploaded: bool
    repo_id: str
    up_to_date: bool = False  # the folder (and upload) were already done: nothing was written

    def line(self) -> str:
        where = f"uploaded to {self.repo_id}" if self.uploaded else f"written to {self.folder}"
        if self.up_to_date:
            return f"push: up to date, {self.rows} rows in {len(self.files)} files {where} earlier; nothing to do"
        return f"push: {self.rows} rows in {len(self.files)} files, {where}"


def check_repo_id(repo_id: str) -> None:
    """A Hub dataset repo id (``name`` or ``owner/name``), by ``huggingface_hub``'s own rules."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PipelineConfigError(
            f"repo_id (--repo-id) {repo_id!r} is not a valid Hub repo id: give name or owner/name (e.g. "
            "me/my-pairs) of letters, digits, '-', '_' and '.', without '--' or '..', not starting or ending "
            "with '-' or '.', at most 96 characters"
        ) from None


def check_split(split: str) -> None:
    if not split or not split.replace("_", "").isalnum():
        raise PipelineConfigError(f"split must be letters, digits and '_', got {split!r}")


def write_hub_folder(
    source: str | Path,
    out: str | Path,
    *,
    repo_id: str,
    split: str = "train",
    license: str = "other",
    pretty_name: str | None = None,
    tags: list[str] | None = None,
) -> PushSummary:
    """Write ``out`` (must be new or empty) from the checked table folder ``source``."""
    check_repo_id(repo_id)
    check_split(split)
    manifest, shards = checked_shards(source, check_hashes=True)
    name = manifest.identity.schema
    schema = get_schema(name)
    out = check_folder(out)
    if out.exists() and any(out.iterdir()):
        raise OutputConflictError(f"{out} is not empty; choose a new --out folder")
    with writing(out):
        (out / "data").mkdir(parents=True, exist_ok=True)
    files, num_bytes = [], 0
    for i, shard in enumerate(shards):
        path = out / "data" / f"{split}-{i:05d}-of-{len(shards):05d}.parquet"
        table = read_shard(shard, name).select(schema.names).cast(schema).replace_schema_metadata(None)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
        files.append(str(path.relative_to(out)))
        num_bytes += path.stat().st_size
    report_path = Path(source) / "report.json"
    report = read_json_file(report_path, "report.json") if report_path.exists() else None
    if isinstance(report, dict):  # counts only: the report's local input paths stay local
        report = {k: v for k, v in report.items() if isinstance(v, int)}
    card = render_card(
        manifest,
        schema,
        repo_id=repo_id,
        split=split,
        license=license,
        pretty_name=pretty_name or f"prefpool {name} table",
        tags=tags or ["prefpool", "preference-optimization", name],
        num_bytes=num_bytes,
        files=len(files),
        report=report if isinstance(report, dict) else None,
    )
    write_text(out / "README.md", redact_text(card))
    return PushSummary(out, files, manifest.total_rows, False, repo_id)


def push(
    source: str | Path,
    *,
    repo_id: str,
    dry_run: bool = False,
    out: str | Path | None = None,
    private: bool = False,
    license: str = "other",
    split: str = "train",
    pretty_name: str | None = None,
    tags: list[str] | None = None,
    overwrite: bool = False,
) -> PushSummary:
    """Write data/<split>-*.parquet + README.md (dataset card) and upload them to the Hub.

    The Hub folder is written to ``out`` (or a temporary folder) and, unless
    ``dry_run``, uploaded. The same push again is a no-op (see the module docstring).

    Args:
        source: A `build` output folder.
        repo_id: Hub dataset repo, e.g. me/my-pairs.
        dry_run: Only write the Hub folder (needs --out).
        out: Output folder: the Hub folder, data/<split>-*.parquet and README.md (the card); must be new or empty.
        private: Create the repo as private.
        license: License id for the card.
        split: Split name of the data files.
        pretty_name: Title of the dataset card (default: the repo name).
        tags: Tags of the dataset card; repeat for several.
        overwrite: Replace an --out folder an earlier push with other settings (or another source) wrote.
    """
    check_repo_id(repo_id)
    check_split(split)
    if dry_run and out is None:
        raise PipelineConfigError("push --dry-run needs --out FOLDER to write the Hub folder to")
    content = {"repo_id": repo_id, "split": split, "license": license, "pretty_name": pretty_name, "tags": tags}
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="prefpool-push-"))
        try:
            summary = write_hub_folder(source, tmp / "hub", **content)
            _upload(summary, repo_id, private)
            return PushSummary(Path(f"hf://datasets/{repo_id}"), summary.files, summary.rows, True, repo_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    out = check_folder(out)
    record_path = out.with_name(out.name + RECORD_SUFFIX)
    wanted = {"arguments": content, "source_manifest_sha256": _source_sha(source)}
    record = _read_record(record_path)
    upload = None if dry_run else {"repo_id": repo_id, "private": private}
    if record is not None and record.get("push") == wanted and record.get("complete") and out.is_dir():
        s = record["summary"]
        done = PushSummary(out, s["files"], s["rows"], False, repo_id, up_to_date=True)
        if upload is None or record.get("uploaded") == upload:
            return PushSummary(out, done.files, done.rows, upload is not None, repo_id, up_to_date=True)
        _upload(done, repo_id, private)
        write_json(record_path, {**record, "uploaded": upload})
        return PushSummary(out, done.files, done.rows, True, repo_id)
    _check_replaceable(out, record, record_path, wanted, overwrite)
    checked_shards(source, check_hashes=True)  # a damaged source fails before anything is written

    staging = out.with_name(f".{out.name}.push-staging")
    old_record = record_path.read_text() if record_path.exists() else None
    write_json(record_path, {"complete": False, "push": wanted})  # marks the folder ours before it is touched
    try:
        with writing(staging):
            shutil.rmtree(staging, ignore_errors=True)
        summary = write_hub_folder(source, staging, **content)
    except BaseException:  # a failed push leaves what was there before: the folder and its record
        shutil.rmtree(staging, ignore_errors=True)
        if old_record is None:
            record_path.unlink(missing_ok=True)
        else:
            write_text(record_path, old_record)
        raise
    with writing(out):
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    summary = PushSummary(out, summary.files, summary.rows, False, repo_id)
    done = {"complete": True, "push": wanted, "summary": {"files": summary.files, "rows": summary.rows}}
    write_json(record_path, done)
    if upload is not None:
        _upload(summary, repo_id, private)
        write_json(record_path, {**done, "uploaded": upload})
        return PushSummary(out, summary.files, summary.rows, True, repo_id)
    return summary


def _source_sha(source: str | Path) -> str:
    manifest = Path(source) / MANIFEST_NAME
    if not manifest.is_file():
        raise PipelineInputError(f"no {MANIFEST_NAME}: not a finished `prefpool build` output", file=source)
    return file_sha256(manifest)


def _read_record(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        record = read_json_file(path, "push record")
    except PipelineInputError:
        return {"damaged": True}
    return record if isinstance(record, dict) else {"damaged": True}


def _is_hub_folder(folder: Path) -> bool:
    """Holds nothing but what ``write_hub_folder`` writes: README.md and data/*.parquet."""
    names = {p.name for p in folder.iterdir()}
    data = folder / "data"
    return names <= {"README.md", "data"} and (not data.exists() or all(p.suffix == ".parquet" for p in data.iterdir()))


def _check_replaceable(out: Path, record: dict | None, record_path: Path, wanted: dict, overwrite: bool) -> None:
    """Refuse to replace a folder holding something else than this push's unfinished output."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if record is None:
        if overwrite and _is_hub_folder(out):
            return
        raise OutputConflictError(
            f"{out} is not empty and has no {record_path.name} record of a prefpool push: not replacing it "
            "(overwrite replaces only a Hub folder, README.md and data/*.parquet); choose a new --out folder"
        )
    if record.get("push") == wanted or overwrite:
        return  # this push, unfinished (killed): redo it; or a replacement asked for
    what = "an unreadable record" if record.get("damaged") else "another source or other settings"
    raise OutputConflictError(
        f"{out} holds a Hub folder pushed with {what} ({record_path}); pass overwrite=True (--overwrite) to "
        "replace it, or choose a new --out folder"
    )


def _upload(summary: PushSummary, repo_id: str, private: bool) -> None:
    from huggingface_hub import HfApi

    api = HfApi()  # token: huggingface_hub's own resolution
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(summary.folder),
        commit_message=f"prefpool push: {summary.rows} rows",
    )
