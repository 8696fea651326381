"""The Parquet I/O layer: atomic shard writes, manifests, checked reads."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io import shards
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.layout import MANIFEST, REPORT, RUN_MARKER, meta_path
from prefpool.pipeline.io.read import read_table, scan
from prefpool.pipeline.io.schemas import EXAMPLES
from prefpool.pipeline.io.shards import ShardName, read_shard, shard_metadata, write_shard

ROW = {
    "prompt_id": "0" * 32,
    "prompt": [{"role": "user", "content": "hi"}],
    "answers": [{"text": "a", "score": 1.0, "rank": 1, "source": "m"}],
    "pairs": [],
    "source": "f.jsonl",
}


def test_write_shard_uses_schema_zstd_and_metadata(tmp_path):
    path = tmp_path / "part-00000-of-00001-00000.parquet"
    write_shard(
        path,
        pa.Table.from_pylist([ROW] * 3, schema=EXAMPLES),
        schema_name="examples",
        metadata={"provenance": {"seed": 3}},
        row_group_rows=2,
    )
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow.equals(EXAMPLES)
    assert parquet.metadata.num_row_groups == 2
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    assert shard_metadata(parquet) == {"schema": "examples", "provenance": {"seed": 3}}
    assert read_shard(path, "examples").to_pylist() == [ROW] * 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_crash_mid_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    def crash(tmp, table, row_group_rows):
        tmp.write_bytes(b"PAR1 half a file")
        raise RuntimeError("killed")

    monkeypatch.setattr(shards, "_write_parquet", crash)
    with pytest.raises(RuntimeError):
        write_shard(
            tmp_path / "x.parquet", pa.Table.from_pylist([ROW], schema=EXAMPLES), schema_name="examples", metadata={}
        )
    assert list(tmp_path.iterdir()) == []


def test_shard_names_round_trip():
    name = ShardName.parse("part-00002-of-00004-00013.parquet")
    assert name is not None and (name.shard.index, name.shard.count, name.unit) == (2, 4, 13)
    assert str(name) == "part-00002-of-00004-00013.parquet"
    assert ShardName.parse("report.json") is None


@pytest.fixture
def output(tmp_path, fixtures):
    out = tmp_path / "out"
    ingest(fixtures / "pairwise_strings.jsonl", format="pairwise", out=out, rows_per_unit=2)
    return out


def test_manifest_lists_shards_and_provenance(output):
    manifest = json.loads(meta_path(output, MANIFEST).read_text())
    assert manifest["stage"] == "ingest" and manifest["schema"] == "examples"
    assert manifest["total_rows"] == sum(s["rows"] for s in manifest["shards"]) == 3
    assert [s["file"] for s in manifest["shards"]] == [
        "part-00000-of-00001-00000.parquet",
        "part-00000-of-00001-00001.parquet",
    ]
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    prov = manifest["provenance"]
    assert {"prefpool", "git_revision", "python", "libraries", "seed", "model", "created"} <= set(prov)
    assert {"torch", "transformers", "pyarrow", "polars"} <= set(prov["libraries"])
    assert manifest["identity"]["config"]["format"] == "pairwise"
    assert manifest["sidecars"] == [REPORT]
    assert json.loads(meta_path(output, RUN_MARKER).read_text()) == manifest["identity"]


def test_read_table_and_scan_agree(output):
    table = read_table(output, schema="examples", check_hashes=True)
    assert table.column("prompt_id").to_pylist() == sorted(table.column("prompt_id").to_pylist())
    assert scan(output).collect().to_arrow().column("prompt_id").to_pylist() == table.column("prompt_id").to_pylist()


def test_folder_without_manifest_is_incomplete(output):
    meta_path(output, MANIFEST).unlink()
    with pytest.raises(PipelineInputError, match="no manifest.json"):
        read_table(output)


def test_missing_shard_is_named(output):
    (output / "part-00000-of-00001-00001.parquet").unlink()
    with pytest.raises(PipelineInputError, match="part-00000-of-00001-00001.parquet.*missing"):
        read_table(output)


def test_truncated_shard_is_named(output):
    path = output / "part-00000-of-00001-00000.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineInputError, match="part-00000-of-00001-00000.parquet.*truncated"):
        read_table(output)
    # a truncated file with a patched size still fails to open, naming the file
    manifest = json.loads(meta_path(output, MANIFEST).read_text())
    manifest["shards"][0]["bytes"] = len(data) // 2
    meta_path(output, MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PipelineInputError, match="part-00000-of-00001-00000.parquet.*not a readable Parquet"):
        read_table(output)


def test_row_count_mismatch_is_named(output):
    manifest = json.loads(meta_path(output, MANIFEST).read_text())
    manifest["shards"][1]["rows"] += 1
    meta_path(output, MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PipelineInputError, match=r"00001.parquet.*rows, manifest says"):
        read_table(output)


def test_wrong_schema_names_file_and_column(output):
    path = output / "part-00000-of-00001-00000.parquet"
    table = pq.read_table(path)
    bad = table.set_column(table.schema.get_field_index("source"), "source", pa.array([1] * table.num_rows))
    pq.write_table(bad, path)
    manifest = json.loads(meta_path(output, MANIFEST).read_text())
    manifest["shards"][0]["bytes"] = path.stat().st_size
    meta_path(output, MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PipelineInputError, match=r"00000.parquet, column 'source': column has type int64"):
        read_table(output)
    pq.write_table(table.drop_columns(["answers"]), path)
    manifest["shards"][0]["bytes"] = path.stat().st_size
    meta_path(output, MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PipelineInputError, match=r"00000.parquet, column 'answers': missing column"):
        read_table(output)
