"""Stage output folders load with ``datasets`` as they are; prefpool's own files sit in ``.prefpool/``.

Before: ``load_dataset(folder)`` read ``manifest.json``/``report.json``/``run.json`` as data (the
JSON builder won on file count) and ``load_dataset("parquet", data_dir=folder)`` failed on them
("Parquet magic bytes not found"). The stages reached by the tiny-model run are checked in
``test_end_to_end``; here ingest, score, merge and a folder of the layout before. (An output
with no rows has no shard: ``datasets`` 5.2 loads no empty split, "corresponds to no data".)
"""

from __future__ import annotations

import os

import pytest
from pipeline_helpers import assert_loads_with_datasets

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.layout import MANIFEST, META_DIR, REPORT, RUN_MARKER, find_meta, meta_path, read_meta
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.merge import merge
from prefpool.pipeline.score import score


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_ingest_score_and_merge_outputs_load_with_datasets(tmp_path, fixtures):
    source = fixtures / "nectar.jsonl"  # its two prompts fall in different halves of --shard i/2
    examples = ingest(source, format="ranked", out=tmp_path / "ingest", rows_per_unit=2).out
    scores = score(examples, out=tmp_path / "score", reward_fn="test_score:count_good").out
    halves = [ingest(source, format="ranked", out=tmp_path / f"s{i}", shard=f"{i}/2").out for i in (0, 1)]
    merged = tmp_path / "merged"
    merge(halves, merged)
    for folder in (examples, scores, merged, *halves):
        assert_loads_with_datasets(folder, tmp_path / "hf-cache")
    assert read_meta(examples, REPORT)["rows_read"] > 0  # the report is kept, in .prefpool/
    assert sorted(p.name for p in meta_path(examples, "").iterdir()) == [MANIFEST, REPORT, RUN_MARKER]


def _to_layout_before(folder):
    """Move prefpool's files back beside the shards, as stages wrote them before ``.prefpool/``."""
    for path in meta_path(folder, "").iterdir():
        os.replace(path, folder / path.name)
    meta_path(folder, "").rmdir()


def test_a_folder_of_the_layout_before_is_read_and_a_rerun_moves_its_files(tmp_path, fixtures):
    source = fixtures / "pairwise_strings.jsonl"
    out = ingest(source, format="pairwise", out=tmp_path / "old", rows_per_unit=2).out
    expected = read_table(out, check_hashes=True)
    _to_layout_before(out)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".parquet")) == [MANIFEST, REPORT, RUN_MARKER]
    # readable as it is: manifest, table, report
    assert find_meta(out, MANIFEST) == out / MANIFEST
    assert read_table(out, check_hashes=True).equals(expected)
    assert read_meta(out, REPORT)["rows_read"] == 8  # the fixture's lines
    # the same command again: complete, nothing recomputed, the files moved into .prefpool/
    again = ingest(source, format="pairwise", out=out, rows_per_unit=2)
    assert again.units_written == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".parquet")) == [META_DIR]
    assert find_meta(out, MANIFEST) == meta_path(out, MANIFEST)
    assert read_table(out, check_hashes=True).equals(expected)
    assert_loads_with_datasets(out, tmp_path / "hf-cache")


def test_an_unfinished_run_of_the_layout_before_resumes(tmp_path, fixtures):
    source = fixtures / "pairwise_strings.jsonl"
    out = ingest(source, format="pairwise", out=tmp_path / "old", rows_per_unit=2).out
    expected = read_table(out)
    _to_layout_before(out)
    (out / MANIFEST).unlink()
    (out / "part-00000-of-00001-00001.parquet").unlink()
    resumed = ingest(source, format="pairwise", out=out, rows_per_unit=2)
    assert (resumed.units_written, resumed.units_skipped) == (1, 1)
    assert read_table(out).equals(expected)
    assert not (out / RUN_MARKER).exists() and find_meta(out, RUN_MARKER) == meta_path(out, RUN_MARKER)
