"""``push``: build tables -> the splits of one Hub dataset repo with one card, optionally uploaded.

Each source (a ``build`` output) becomes one split: ``data/<split>-NNNNN-of-NNNNN.parquet`` (one
file per source shard, rows in the same order, cast to the code's schema). ``README.md`` is the
card (``io.card``) for every split of the repo: the splits pushed now and those already there, so
pushing ``test`` after ``train`` keeps ``train`` (its files and its card entry). All splits of a
repo hold one table kind. The card is redacted (``prefpool.core.secrets``) like every other file.

Every option is checked (the repo id by the Hub client's own rules, ``validate_repo_id``) and every
source against its manifest before anything is written, in a dry run too.

``out`` (needed by ``dry_run``) is rebuilt as a whole in a sibling staging folder and swapped in
when complete, so a killed or failed push never leaves a half-written folder under the final name.
Inside it, ``.prefpool/push.json`` (hidden: ``datasets`` and the upload skip it) records what the
folder holds (each split's source manifest sha256 and the push's settings); it is written into the
staging folder, so it arrives with the folder it describes (a record of the layout before,
``<out>.push.json`` beside the folder, is read and then removed):

- the same push again over a complete folder is a no-op that says so (``PushSummary.up_to_date``);
- a new split goes beside the splits already there;
- a split already there, pushed again from another source or with other settings, is replaced only
  with ``overwrite`` (so is a folder pushed to another repo id); an unfinished push (killed mid-way)
  is redone by the same push;
- a non-empty folder without a record is not replaced (``overwrite`` replaces only a folder that
  holds nothing but ``README.md`` and ``data/*.parquet``; the other splits of its card stay).

Without ``dry_run`` the card already on the Hub is read back (``hf_hub_download``), and one commit
uploads the new files and card and deletes the old files of the replaced splits only. The token is
whatever huggingface_hub resolves itself (``HF_TOKEN``, ``huggingface-cli login``): prefpool never
reads, prints or writes it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq

import prefpool
from prefpool.core.outputs import check_folder, writing
from prefpool.core.secrets import redact_text
from prefpool.pipeline.io.atomic import atomic_path, write_json, write_text
from prefpool.pipeline.io.card import CARD, card_metadata, read_card, render_card, split_entry
from prefpool.pipeline.io.card_fields import (
    DEFAULT_TASK_CATEGORIES,
    UNKNOWN_LICENSE,
    check_languages,
    check_license,
    check_repo_id,
    check_split,
    check_tags,
    check_task_categories,
    check_title,
)
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.layout import MANIFEST, META_DIR, REPORT, find_meta, read_meta
from prefpool.pipeline.io.manifest import Manifest, file_sha256, read_json_file
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.schemas import conform, get_schema
from prefpool.pipeline.io.shards import COMPRESSION, ROW_GROUP_ROWS, read_shard
from prefpool.pipeline.io.swap import real_folder, swap_in
from prefpool.pipeline.io.writer_lock import writes_folder
from prefpool.pipeline.kinds.inputs import reference_caches

RECORD = "push.json"  # in the folder's META_DIR
LEGACY_RECORD_SUFFIX = ".push.json"  # the layout before: <out>.push.json beside the folder


@dataclass(frozen=True)
class PushSummary:
    folder: Path
    files: list[str]  # the data files written by this push
    rows: int  # rows pushed now (all splits of this call)
    uploaded: bool
    repo_id: str
    splits: tuple[str, ...] = ()  # every split of the card, the kept ones too
    pushed: tuple[str, ...] = ()  # the splits written by this push
    up_to_date: bool = False  # the folder (and upload) were already done: nothing was written

    def line(self) -> str:
        where = f"uploaded to {self.repo_id}" if self.uploaded else f"written to {self.folder}"
        if self.up_to_date:
            return f"push: up to date, {self.rows} rows in {len(self.files)} files {where} earlier; nothing to do"
        return (
            f"push: {self.rows} rows in {len(self.files)} files (split {', '.join(self.pushed)}), {where}; "
            f"the card lists {', '.join(self.splits)}"
        )


@dataclass(frozen=True)
class _Source:
    split: str
    folder: Path
    manifest: Manifest
    shards: list[Path]


def _planned(source, split) -> list[tuple[str, Path]]:
    """(split name, source folder) pairs, the names checked; nothing is read yet."""
    folders = [Path(s) for s in ([source] if isinstance(source, (str, Path)) else list(source))]
    if not folders:
        raise PipelineConfigError("push needs at least one source folder")
    names = [split] if isinstance(split, str) else list(split or [])
    if not names:
        if len(folders) > 1:
            raise PipelineConfigError(
                f"{len(folders)} sources: name their splits, one --split per source in the same order "
                "(e.g. --split train --split test)"
            )
        names = ["train"]
    if len(names) != len(folders):
        raise PipelineConfigError(f"{len(folders)} source folders but {len(names)} --split names; give one per source")
    for name in names:
        check_split(name)
    if len(set(names)) != len(names):
        raise PipelineConfigError(f"split names repeat: {names}")
    return list(zip(names, folders, strict=True))


def _manifest_sha(folder: Path) -> str:
    manifest = find_meta(folder, MANIFEST)
    if manifest is None:
        raise PipelineInputError(f"no {MANIFEST} (in {META_DIR}/): not a finished `prefpool build` output", file=folder)
    return file_sha256(manifest)


def _sources(planned: list[tuple[str, Path]]) -> list[_Source]:
    """Every source checked against its manifest (sha256 of each shard); one table kind for all."""
    out = []
    for name, folder in planned:
        manifest, shards = checked_shards(folder, check_hashes=True)
        out.append(_Source(name, folder, manifest, shards))
    kinds = {s.manifest.identity.schema for s in out}
    if len(kinds) > 1:
        raise PipelineConfigError(
            f"the sources hold different tables ({', '.join(sorted(kinds))}); one repo holds one kind"
        )
    return out


def _report(folder: Path) -> dict | None:
    if find_meta(folder, REPORT) is None:
        return None
    report = read_meta(folder, REPORT)
    # counts only: the report's local input paths stay local
    return {k: v for k, v in report.items() if isinstance(v, int)} if isinstance(report, dict) else None


def _write_split(src: _Source, dest: Path) -> tuple[list[str], dict]:
    """The split's data files under ``dest/data`` and its card entry."""
    name = src.manifest.identity.schema
    schema = get_schema(name)
    files, num_bytes = [], 0
    for i, shard in enumerate(src.shards):
        path = dest / "data" / f"{src.split}-{i:05d}-of-{len(src.shards):05d}.parquet"
        table = conform(read_shard(shard, name), schema).replace_schema_metadata(None)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
        files.append(str(path.relative_to(dest)))
        num_bytes += path.stat().st_size
    entry = split_entry(
        src.manifest,
        files=len(files),
        num_bytes=num_bytes,
        report=_report(src.folder),
        caches=reference_caches(src.manifest),
        manifest_sha256=_manifest_sha(src.folder),
    )
    return files, entry


def _card(
    sources: list[_Source],
    entries: dict[str, dict],
    existing: dict | None,
    *,
    repo_id: str,
    license: str | None,
    languages: list[str],
    task_categories: list[str],
    pretty_name: str | None,
    tags: list[str] | None,
) -> tuple[str, list[str]]:
    """README.md text for the kept splits of ``existing`` plus ``entries``; returns (card, split names)."""
    kind = sources[0].manifest.identity.schema
    old = existing or {}
    kept: dict[str, dict] = {}
    if existing is not None:
        if old["prefpool"]["table_kind"] != kind:
            raise PipelineConfigError(
                f"the repo holds {old['prefpool']['table_kind']!r} splits; a {kind!r} table goes to another repo"
            )
        kept = {k: v for k, v in old["prefpool"]["splits"].items() if k not in entries}
    meta = card_metadata(
        kind,
        get_schema(kind),
        {**kept, **entries},
        license=license,
        languages=languages,
        task_categories=task_categories or old.get("task_categories") or list(DEFAULT_TASK_CATEGORIES),
        pretty_name=pretty_name or old.get("pretty_name") or f"prefpool {kind} table",
        tags=tags or old.get("tags") or ["prefpool", "preference-optimization", kind],
        prefpool_version=prefpool.__version__,
    )
    # Nothing recorded in the splits' sources: keep what the card said before (a flag of an earlier push).
    if license is None and meta["license"] == UNKNOWN_LICENSE and old.get("license"):
        meta["license"] = old["license"]
    if not languages and "language" not in meta and old.get("language"):
        meta = {"license": meta["license"], "language": old["language"], **meta}
    return redact_text(render_card(meta, repo_id=repo_id)), list(meta["prefpool"]["splits"])


def write_hub_folder(
    sources: list[_Source],
    out: str | Path,
    *,
    repo_id: str,
    license: str | None = None,
    language: list[str] | None = None,
    task_categories: list[str] | None = None,
    pretty_name: str | None = None,
    tags: list[str] | None = None,
    existing: dict | None = None,
    keep_from: Path | None = None,
) -> PushSummary:
    """Write the Hub folder ``out`` (new or empty) for the checked ``sources``; ``existing``: the card already
    in the repo, whose other splits stay in the new card; ``keep_from``: a local folder holding their files."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputConflictError(f"{out} is not empty; choose a new --out folder")
    with writing(out):
        (out / "data").mkdir(parents=True, exist_ok=True)
    files, entries = [], {}
    for src in sources:
        written, entries[src.split] = _write_split(src, out)
        files += written
    card, names = _card(
        sources,
        entries,
        existing,
        repo_id=repo_id,
        license=license,
        languages=check_languages(language),
        task_categories=check_task_categories(task_categories),
        pretty_name=pretty_name,
        tags=tags,
    )
    if keep_from is not None:
        for name in names:
            if name in entries:
                continue
            for path in sorted((keep_from / "data").glob(f"{name}-*.parquet")):
                shutil.copy2(path, out / "data" / path.name)
    write_text(out / CARD, card)
    rows = sum(s.manifest.total_rows for s in sources)
    return PushSummary(
        folder=out,
        files=files,
        rows=rows,
        uploaded=False,
        repo_id=repo_id,
        splits=tuple(names),
        pushed=tuple(entries),
    )


@writes_folder(lambda a: a["out"], command="push")
def push(
    source: str | Path | list[str | Path],
    *,
    repo_id: str,
    split: str | list[str] | None = None,
    dry_run: bool = False,
    out: str | Path | None = None,
    private: bool = False,
    license: str | None = None,
    language: list[str] | None = None,
    task_categories: list[str] | None = None,
    pretty_name: str | None = None,
    tags: list[str] | None = None,
    overwrite: bool = False,
) -> PushSummary:
    """Write data/<split>-*.parquet + README.md (one dataset card for every split) and upload them to the Hub.

    The Hub folder is written to ``out`` (or a temporary folder) and, unless
    ``dry_run``, uploaded. Splits already in ``out`` (dry run) or in the repo stay.
    The same push again is a no-op (see the module docstring).

    Args:
        source: `build` output folders, one per split.
        repo_id: Hub dataset repo, e.g. me/my-pairs.
        split: Split name of each source, in order (default: train for one source); repeat for several.
        dry_run: Only write the Hub folder (needs --out).
        out: Output folder: the Hub folder, data/<split>-*.parquet and README.md (the card); a folder an earlier
            push wrote keeps its other splits.
        private: Create the repo as private.
        license: Licence id for the card (default: the one ingest recorded for the source, else unknown).
        language: Language code of the texts, e.g. en (default: the one ingest recorded); repeat for several.
        task_categories: Hub task category (default: text-generation); repeat for several.
        pretty_name: Title of the dataset card (default: the earlier card's, else prefpool <kind> table).
        tags: Tag of the dataset card (default: prefpool, preference-optimization, <kind>); repeat for several.
        overwrite: Replace a split of --out that an earlier push wrote from another source or with other
            settings (or a Hub folder without a push record).
    """
    check_repo_id(repo_id)
    check_license(license)
    check_languages(language)
    check_task_categories(task_categories)
    check_tags(tags)
    check_title(pretty_name)
    planned = _planned(source, split)
    if dry_run and out is None:
        raise PipelineConfigError("push --dry-run needs --out FOLDER to write the Hub folder to")
    options = dict(
        license=license, language=language, task_categories=task_categories, pretty_name=pretty_name, tags=tags
    )
    upload = None if dry_run else {"repo_id": repo_id, "private": private}
    if out is None:
        sources = _sources(planned)
        summary = _upload(sources, repo_id=repo_id, private=private, options=options)
        return replace(summary, folder=Path(f"hf://datasets/{repo_id}"))

    out = real_folder(check_folder(out))  # a link: written at its target, the link kept
    record_path = out / META_DIR / RECORD
    legacy_record = out.with_name(out.name + LEGACY_RECORD_SUFFIX)
    settings = json.loads(json.dumps({"repo_id": repo_id, **options}))  # as the record reads back
    shas = [_manifest_sha(folder) for _, folder in planned]
    wanted = {"arguments": {**settings, "split": [name for name, _ in planned]}, "source_manifest_sha256": shas}
    splits_wanted = {
        name: {"arguments": settings, "source_manifest_sha256": sha}
        for (name, _), sha in zip(planned, shas, strict=True)
    }
    record = _read_record(record_path if record_path.exists() else legacy_record)
    if record is not None and record.get("push") == wanted and record.get("complete") and out.is_dir():
        s = record["summary"]
        done = PushSummary(
            folder=out,
            files=s["files"],
            rows=s["rows"],
            uploaded=False,
            repo_id=repo_id,
            splits=tuple(s["splits"]),
            pushed=tuple(s["pushed"]),
            up_to_date=True,
        )
        if upload is None or record.get("uploaded") == upload:
            return replace(done, uploaded=upload is not None)
        uploaded = _upload(_sources(planned), repo_id=repo_id, private=private, options=options)
        record_path.parent.mkdir(exist_ok=True)
        write_json(record_path, {**record, "uploaded": upload})
        legacy_record.unlink(missing_ok=True)
        return replace(uploaded, folder=out)
    existing = _check_replaceable(out, record, record_path, wanted, splits_wanted, repo_id, overwrite)
    sources = _sources(planned)  # a damaged source fails before anything is written

    kept_splits = {k: v for k, v in ((record or {}).get("splits") or {}).items() if isinstance(v, dict)}
    staging = out.with_name(f".{out.name}.push-staging")
    try:
        with writing(staging):
            shutil.rmtree(staging, ignore_errors=True)
        summary = write_hub_folder(
            sources, staging, repo_id=repo_id, existing=existing, keep_from=out if existing else None, **options
        )
        done = {
            "complete": True,
            "push": wanted,
            "repo_id": repo_id,
            "splits": {k: v for k, v in {**kept_splits, **splits_wanted}.items() if k in summary.splits},
            "summary": {
                "files": summary.files,
                "rows": summary.rows,
                "splits": list(summary.splits),
                "pushed": list(summary.pushed),
            },
        }
        (staging / META_DIR).mkdir(exist_ok=True)
        write_json(staging / META_DIR / RECORD, done)  # arrives with the folder it describes
    except BaseException:  # a failed push leaves what was there before: the folder and its record
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with writing(out):
        swap_in(staging, out)
    legacy_record.unlink(missing_ok=True)
    summary = replace(summary, folder=out)
    if upload is not None:
        uploaded = _upload(sources, repo_id=repo_id, private=private, options=options)
        write_json(record_path, {**done, "uploaded": upload})
        return replace(uploaded, folder=out)
    return summary


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
    return names <= {"README.md", "data", META_DIR} and (
        not data.exists() or all(p.suffix == ".parquet" for p in data.iterdir())
    )


def _check_replaceable(
    out: Path, record: dict | None, record_path: Path, wanted: dict, splits_wanted: dict, repo_id: str, overwrite: bool
) -> dict | None:
    """Refuse to rebuild a folder that holds something else than pushed splits this push may keep or replace;
    return the folder's card (its other splits stay), None for a new or empty folder."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    hub = _is_hub_folder(out)
    card = read_card(out) if hub else None
    if record is None or card is None:
        if overwrite and hub:
            return card  # a Hub folder replaced; the other splits of a prefpool card stay
        raise OutputConflictError(
            f"{out} is not empty and holds no folder `prefpool push` wrote (no {record_path.name} record of a "
            f"prefpool push, or files other than {CARD} and data/*.parquet): not replacing it (overwrite replaces "
            f"only a Hub folder, {CARD} and data/*.parquet); choose a new --out folder"
        )
    if overwrite:
        return card
    if record.get("damaged"):
        what = "an unreadable record"
    elif not record.get("complete"):
        if record.get("push") == wanted:
            return card  # this push, unfinished (killed): redo it
        what = "a push that did not finish, with another source or other settings"
    elif record.get("repo_id") != repo_id:
        what = f"another repo id ({record.get('repo_id')!r})"
    else:
        recorded = record.get("splits") or {}
        changed = [name for name, want in splits_wanted.items() if name in recorded and recorded[name] != want]
        if not changed:
            return card  # new splits beside the others, or the same splits again
        what = f"another source or other settings (split {', '.join(changed)})"
    raise OutputConflictError(
        f"{out} holds a Hub folder pushed with {what} ({record_path}); pass overwrite=True (--overwrite) to "
        "replace it, or choose a new --out folder"
    )


def _remote_card(api, repo_id: str) -> dict | None:
    """The prefpool card already in the Hub repo (None for a repo without a README); refuses another card."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with tempfile.TemporaryDirectory(prefix="prefpool-card-") as tmp:
        try:
            api.hf_hub_download(repo_id=repo_id, filename=CARD, repo_type="dataset", local_dir=tmp)
        except RemoteEntryNotFoundError:
            return None
        card = read_card(tmp)
        if card is None:
            raise OutputConflictError(
                f"the Hub repo {repo_id} has a {CARD} that `prefpool push` did not write; push to a new repo"
            )
        return card


def _upload(sources: list[_Source], *, repo_id: str, private: bool, options: dict) -> PushSummary:
    """One commit to the Hub repo: the sources' splits and the card of every split (the repo's kept ones too)."""
    from huggingface_hub import HfApi

    api = HfApi()  # token: huggingface_hub's own resolution
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    remote = _remote_card(api, repo_id)
    tmp = Path(tempfile.mkdtemp(prefix="prefpool-push-"))
    try:
        summary = write_hub_folder(sources, tmp / "hub", repo_id=repo_id, existing=remote, **options)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(summary.folder),
            # the old files of the splits pushed now go; the other splits' files stay
            delete_patterns=[f"data/{name}-*" for name in summary.pushed],
            commit_message=f"prefpool push: {summary.rows} rows ({', '.join(summary.pushed)})",
        )
        return replace(summary, uploaded=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
