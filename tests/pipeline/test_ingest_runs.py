"""Resume, --shard i/N + merge, config conflicts, and crash safety of whole runs."""

from __future__ import annotations

import json
import shutil

import pytest

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io import shards
from prefpool.pipeline.io.errors import OutputConflictError, PipelineInputError
from prefpool.pipeline.io.layout import MANIFEST, REPORT, RUN_MARKER, meta_path, read_meta
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.merge import merge

# the fixtures drop rows on purpose: the warning that says so is tested in test_ingest_loss.py
pytestmark = pytest.mark.filterwarnings("ignore::prefpool.pipeline.formats.report.DroppedRowsWarning")


@pytest.fixture
def source(tmp_path, fixtures):
    """Several formats' worth of pairwise rows in one folder: 2 files, 12 rows."""
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copy(fixtures / "pairwise_strings.jsonl", folder / "a.jsonl")
    shutil.copy(fixtures / "pairwise_chat.jsonl", folder / "b.jsonl")
    shutil.copy(fixtures / "pairwise.csv", folder / "c.csv")
    return folder


def _files(folder):
    """Every file under ``folder`` (the shards and ``.prefpool/``) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_with_the_same_config_is_a_no_op(tmp_path, source):
    out = tmp_path / "out"
    first = ingest(source, format="pairwise", out=out, rows_per_unit=2)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = ingest(source, format="pairwise", out=out, rows_per_unit=2)
    assert (again.units_written, again.units_skipped) == (0, first.units_written)
    assert again.rows_written == first.rows_written
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_resume_after_losing_a_shard_and_the_manifest(tmp_path, source):
    out = tmp_path / "out"
    first = ingest(source, format="pairwise", out=out, rows_per_unit=2)
    expected = read_table(out)
    assert first.units_written == 3
    (out / "part-00000-of-00001-00001.parquet").unlink()
    meta_path(out, MANIFEST).unlink()
    resumed = ingest(source, format="pairwise", out=out, rows_per_unit=2)
    assert (resumed.units_written, resumed.units_skipped) == (1, 2)
    assert read_table(out).equals(expected)


def test_damaged_shard_under_a_manifest_is_rewritten(tmp_path, source):
    out = tmp_path / "out"
    ingest(source, format="pairwise", out=out, rows_per_unit=2)
    expected = read_table(out)
    (out / "part-00000-of-00001-00002.parquet").write_bytes(b"junk")
    resumed = ingest(source, format="pairwise", out=out, rows_per_unit=2)
    assert resumed.units_written == 1
    assert read_table(out, check_hashes=True).equals(expected)


def test_shard_runs_merged_equal_one_run(tmp_path, source):
    whole = tmp_path / "whole"
    ingest(source, format="pairwise", out=whole, rows_per_unit=2)
    parts = [tmp_path / f"s{i}" for i in range(3)]
    sizes = [
        ingest(source, format="pairwise", out=p, shard=f"{i}/3", rows_per_unit=2).rows_written
        for i, p in enumerate(parts)
    ]
    assert sum(sizes) == read_table(whole).num_rows and all(p.name.startswith("s") for p in parts)
    assert all(f.name.startswith(f"part-{i:05d}-of-00003-") for i, p in enumerate(parts) for f in p.glob("part-*"))
    merged = tmp_path / "merged"
    merge(list(reversed(parts)), merged)
    assert read_table(merged).equals(read_table(whole))
    assert sorted(f.name for f in merged.glob("part-*")) == sorted(f.name for f in whole.glob("part-*"))
    reports = [read_meta(d, REPORT) for d in (merged, whole)]
    for key in ("rows_read", "rows_dropped", "dropped_rows", "duplicate_rows_merged"):
        assert reports[0][key] == reports[1][key]
    # the merged folder has the unsharded run's identity: ingest finds it complete
    assert ingest(source, format="pairwise", out=merged, rows_per_unit=2).units_written == 0


def test_merge_refuses_incomplete_or_mismatched_shard_sets(tmp_path, source):
    parts = [tmp_path / f"s{i}" for i in range(2)]
    for i, p in enumerate(parts):
        ingest(source, format="pairwise", out=p, shard=f"{i}/2")
    with pytest.raises(PipelineInputError, match="each shard 0..1 of 2 exactly once"):
        merge(parts[:1], tmp_path / "m1")
    other = tmp_path / "other"
    ingest(source, format="pairwise", out=other, shard="1/2", strict=False, prompt_column="prompt")
    with pytest.raises(PipelineInputError, match=r"config.columns differ"):
        merge([parts[0], other], tmp_path / "m2")


def test_different_config_over_an_existing_output_is_refused(tmp_path, source, fixtures):
    out = tmp_path / "out"
    ingest(source, format="pairwise", out=out)
    with pytest.raises(OutputConflictError, match=r"different settings \(config.source, inputs differ\).*--overwrite"):
        ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=out)
    # a changed input file under the same name is a different run too
    with open(source / "a.jsonl", "a") as handle:
        handle.write(json.dumps({"prompt": "new", "chosen": "x", "rejected": "y"}) + "\n")
    with pytest.raises(OutputConflictError, match=r"\(inputs differ\)"):
        ingest(source, format="pairwise", out=out)
    replaced = ingest(source, format="pairwise", out=out, overwrite=True)
    assert read_table(out).num_rows == replaced.rows_written
    assert not list(tmp_path.glob(".out.*"))  # staging and old folders are gone


def test_non_pipeline_folder_is_never_used(tmp_path, source):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputConflictError, match="holds no prefpool output"):
            ingest(source, format="pairwise", out=out, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "mine"


def test_crash_mid_write_keeps_the_earlier_output(tmp_path, source, fixtures, monkeypatch):
    out = tmp_path / "out"
    ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=out)
    before = _files(out)
    real, calls = shards._write_parquet, []

    def crash_on_second_shard(tmp, table, row_group_rows):
        calls.append(tmp)
        if len(calls) == 2:
            tmp.write_bytes(b"PAR1 half a file")
            raise KeyboardInterrupt  # as if killed mid-write
        real(tmp, table, row_group_rows)

    monkeypatch.setattr(shards, "_write_parquet", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        ingest(source, format="pairwise", out=out, overwrite=True, rows_per_unit=2)
    assert _files(out) == before  # untouched
    staging = tmp_path / ".out.staging"
    finals = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
    assert finals == ["part-00000-of-00001-00000.parquet"]  # no half-written shard
    assert sorted(p.name for p in meta_path(staging, "").iterdir()) == [RUN_MARKER]
    # the same command again resumes the staged run and swaps it in
    monkeypatch.setattr(shards, "_write_parquet", real)
    resumed = ingest(source, format="pairwise", out=out, overwrite=True, rows_per_unit=2)
    assert (resumed.units_written, resumed.units_skipped) == (2, 1)
    assert not staging.exists()
    fresh = tmp_path / "fresh"
    ingest(source, format="pairwise", out=fresh, rows_per_unit=2)
    assert read_table(out).equals(read_table(fresh))


def test_crash_in_a_fresh_folder_leaves_no_final_shard(tmp_path, source, monkeypatch):
    def crash(tmp, table, row_group_rows):
        tmp.write_bytes(b"PAR1")
        raise OSError("disk full")

    monkeypatch.setattr(shards, "_write_parquet", crash)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        ingest(source, format="pairwise", out=out)
    assert not out.exists()  # the first shard failed: no final shard, no run.json, no temporary file
    with pytest.raises(PipelineInputError, match="no manifest.json"):
        read_table(out)


def test_unfinished_run_with_shards_and_another_config_is_refused(tmp_path, source, fixtures, monkeypatch):
    real, calls = shards._write_parquet, []

    def crash_on_second_shard(tmp, table, row_group_rows):
        calls.append(tmp)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(tmp, table, row_group_rows)

    monkeypatch.setattr(shards, "_write_parquet", crash_on_second_shard)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ingest(source, format="pairwise", out=out, rows_per_unit=2)
    monkeypatch.setattr(shards, "_write_parquet", real)
    with pytest.raises(OutputConflictError, match="an unfinished 'ingest' run"):
        ingest(fixtures / "prompts.jsonl", format="prompts", out=out)


def test_pipeline_import_loads_no_model_libraries():
    import subprocess
    import sys

    code = (
        "import sys, prefpool.pipeline.ingest, prefpool.pipeline.merge, prefpool.pipeline.io.read; "
        "print([m for m in ('torch', 'transformers', 'datasets', 'vllm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
