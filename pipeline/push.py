"""``push``: build tables -> the splits of one Hub dataset repo with one card, optionally uploaded.

Each source (a ``build`` output) becomes one split: ``data/<split>-NNNNN-of-NNNNN.parquet`` (one
file per source shard, rows in the same order, cast to the code's schema). ``README.md`` is the
card (``io.card``) for every split of the repo: the splits pushed now and those already there, so
pushing ``test`` after ``train`` keeps ``train`` (its files and its card entry). A split pushed
again is replaced. All splits of a repo hold one table kind.

``dry_run`` writes the folder to ``out`` only: an ``out`` that already holds a pushed folder gets
the new splits beside its others, rebuilt in a staging folder and swapped in when complete. Without
``dry_run`` the card already on the Hub is read back (``hf_hub_download``), and one commit uploads
the new files and card and deletes the old files of the replaced splits only. The token is
whatever huggingface_hub resolves itself (``HF_TOKEN``, ``huggingface-cli login``): prefpool never
reads, prints or writes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

import prefpool
from prefpool.pipeline.io.atomic import atomic_path
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
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError
from prefpool.pipeline.io.layout import MANIFEST, REPORT, find_meta, read_meta
from prefpool.pipeline.io.manifest import Manifest, file_sha256
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.schemas import get_schema
from prefpool.pipeline.io.shards import COMPRESSION, ROW_GROUP_ROWS, read_shard
from prefpool.pipeline.kinds.inputs import reference_caches

TRAINING_TABLES = ("pairwise", "mcpo", "mpo")


@dataclass(frozen=True)
class PushSummary:
    folder: Path
    files: list[str]  # the data files written by this push
    rows: int  # rows pushed now (all splits of this call)
    uploaded: bool
    repo_id: str
    splits: tuple[str, ...] = ()  # every split of the card, the kept ones too
    pushed: tuple[str, ...] = ()  # the splits written by this push


@dataclass(frozen=True)
class _Source:
    split: str
    folder: Path
    manifest: Manifest
    shards: list[Path]


def _sources(source, split) -> list[_Source]:
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
    out = []
    for name, folder in zip(names, folders, strict=True):
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
    # counts only: the report's local input paths stay local
    return {k: v for k, v in read_meta(folder, REPORT).items() if isinstance(v, int)}


def _write_split(src: _Source, dest: Path) -> tuple[list[str], dict]:
    """The split's data files under ``dest/data`` and its card entry."""
    name = src.manifest.identity.schema
    schema = get_schema(name)
    files, num_bytes = [], 0
    for i, shard in enumerate(src.shards):
        path = dest / "data" / f"{src.split}-{i:05d}-of-{len(src.shards):05d}.parquet"
        table = read_shard(shard, name).select(schema.names).cast(schema).replace_schema_metadata(None)
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
        manifest_sha256=file_sha256(find_meta(src.folder, MANIFEST)),
    )
    return files, entry


def _existing_card(out: Path) -> dict | None:
    """The card of a pushed folder at ``out`` (None when ``out`` is new or empty); refuses other folders."""
    if not out.exists() or not any(out.iterdir()):
        return None
    card = read_card(out)
    if card is None:
        raise OutputConflictError(
            f"{out} is not empty and holds no folder `prefpool push` wrote (no {CARD} with a prefpool block); "
            "choose a new --out folder"
        )
    return card


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
    return render_card(meta, repo_id=repo_id), list(meta["prefpool"]["splits"])


def write_hub_folder(
    source,
    out: str | Path,
    *,
    repo_id: str,
    split=None,
    license: str | None = None,
    language: list[str] | None = None,
    task_categories: list[str] | None = None,
    pretty_name: str | None = None,
    tags: list[str] | None = None,
    existing: dict | None = None,
    keep_from: Path | None = None,
) -> PushSummary:
    """Write the Hub folder ``out`` (new or empty) for the sources; ``existing``: the card already in the
    repo, whose other splits stay in the new card; ``keep_from``: a local folder holding their files."""
    sources = _sources(source, split)
    languages = check_languages(language)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputConflictError(f"{out} is not empty; choose a new --out folder")
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
        languages=languages,
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
    with atomic_path(out / CARD) as tmp:
        tmp.write_text(card, encoding="utf-8")
    rows = sum(s.manifest.total_rows for s in sources)
    return PushSummary(out, files, rows, False, repo_id, tuple(names), tuple(entries))


def _swap(staging: Path, out: Path) -> None:
    """Put the complete folder ``staging`` at ``out``: never a half-written folder under ``out``."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)


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
) -> PushSummary:
    """Write data/<split>-*.parquet + README.md (one dataset card for every split) and upload them to the Hub.

    The Hub folder is written to ``out`` (or a temporary folder) and, unless
    ``dry_run``, uploaded. Splits already in ``out`` (dry run) or in the repo stay.

    Args:
        source: `build` output folders, one per split.
        repo_id: Hub dataset repo, e.g. me/my-pairs.
        split: Split name of each source, in order (default: train for one source); repeat for several.
        dry_run: Only write the Hub folder (needs --out).
        out: Where to write the Hub folder; a folder an earlier push wrote keeps its other splits.
        private: Create the repo as private.
        license: Licence id for the card (default: the one ingest recorded for the source, else unknown).
        language: Language code of the texts, e.g. en (default: the one ingest recorded); repeat for several.
        task_categories: Hub task category (default: text-generation); repeat for several.
        pretty_name: Title of the dataset card (default: the earlier card's, else prefpool <kind> table).
        tags: Tag of the dataset card (default: prefpool, preference-optimization, <kind>); repeat for several.
    """
    check_repo_id(repo_id)
    check_license(license)
    check_languages(language)
    check_task_categories(task_categories)
    check_tags(tags)
    check_title(pretty_name)
    if dry_run and out is None:
        raise PipelineConfigError("push --dry-run needs --out FOLDER to write the Hub folder to")
    options = dict(
        repo_id=repo_id,
        split=split,
        license=license,
        language=language,
        task_categories=task_categories,
        pretty_name=pretty_name,
        tags=tags,
    )
    if out is not None:
        out = Path(out)
        existing = _existing_card(out)
        staging = out.parent / f".{out.name}.push-staging"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary = write_hub_folder(
                source, staging, existing=existing, keep_from=out if existing else None, **options
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap(staging, out)
        summary = PushSummary(out, summary.files, summary.rows, False, repo_id, summary.splits, summary.pushed)
        if dry_run:
            return summary
    from huggingface_hub import HfApi

    api = HfApi()  # token: huggingface_hub's own resolution
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    remote = _remote_card(api, repo_id)
    tmp = Path(tempfile.mkdtemp(prefix="prefpool-push-"))
    try:
        summary = write_hub_folder(source, tmp / "hub", existing=remote, **options)
        new_splits = summary.pushed
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(summary.folder),
            # the old files of the splits pushed now go; the other splits' files stay
            delete_patterns=[f"data/{name}-*" for name in new_splits],
            commit_message=f"prefpool push: {summary.rows} rows ({', '.join(new_splits)})",
        )
        return PushSummary(
            out if out is not None else Path(f"hf://datasets/{repo_id}"),
            summary.files,
            summary.rows,
            True,
            repo_id,
            summary.splits,
            summary.pushed,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
