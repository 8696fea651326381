"""``push``: a pipeline table -> a Hub-ready dataset folder, optionally uploaded.

The folder holds ``data/<split>-NNNNN-of-NNNNN.parquet`` (one file per source
shard, rows in the same order, cast to the code's schema) and ``README.md``
(``card.render_card``). Without ``dry_run`` the folder is uploaded with
``huggingface_hub``; the token is whatever huggingface_hub resolves itself
(``HF_TOKEN``, ``huggingface-cli login``): prefpool never reads, prints or
writes it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from prefpool.pipeline.io.atomic import atomic_path
from prefpool.pipeline.io.card import render_card
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.io.schemas import get_schema
from prefpool.pipeline.io.shards import COMPRESSION, ROW_GROUP_ROWS, read_shard

TRAINING_TABLES = ("pairwise", "mcpo", "mpo")


@dataclass(frozen=True)
class PushSummary:
    folder: Path
    files: list[str]
    rows: int
    uploaded: bool
    repo_id: str


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
    manifest, shards = checked_shards(source, check_hashes=True)
    name = manifest.identity.schema
    schema = get_schema(name)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputConflictError(f"{out} is not empty; choose a new --out folder")
    if not split.replace("_", "").isalnum():
        raise PipelineConfigError(f"split must be letters, digits and '_', got {split!r}")
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
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    if report is not None:  # counts only: the report's local input paths stay local
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
        report=report,
    )
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(card)
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
) -> PushSummary:
    """Write data/<split>-*.parquet + README.md (dataset card) and upload them to the Hub.

    The Hub folder is written to ``out`` (or a temporary folder) and, unless
    ``dry_run``, uploaded.

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
    """
    if dry_run and out is None:
        raise PipelineConfigError("push --dry-run needs --out FOLDER to write the Hub folder to")
    tmp = None if out is not None else Path(tempfile.mkdtemp(prefix="prefpool-push-"))
    try:
        summary = write_hub_folder(
            source, out or tmp, repo_id=repo_id, split=split, license=license, pretty_name=pretty_name, tags=tags
        )
        if dry_run:
            return summary
        from huggingface_hub import HfApi

        api = HfApi()  # token: huggingface_hub's own resolution
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(summary.folder),
            commit_message=f"prefpool push: {summary.rows} rows",
        )
        return PushSummary(
            summary.folder if tmp is None else Path(f"hf://datasets/{repo_id}"),
            summary.files,
            summary.rows,
            True,
            repo_id,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
