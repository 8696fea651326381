"""Paths and helpers shared by the pipeline tests (a plain module: `conftest` is not importable by name)."""

from __future__ import annotations

from pathlib import Path

from prefpool.pipeline.io.read import read_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
# The repo is /work/main and the shared data /work/shared/data: `../shared/data` from the repo root.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def rows_by_id(folder: Path) -> dict[str, dict]:
    return {row["prompt_id"]: row for row in read_table(folder).to_pylist()}


def assert_loads_with_datasets(folder: Path, cache_dir: Path) -> None:
    """``datasets.load_dataset(folder)`` and ``load_dataset("parquet", data_dir=folder)`` give exactly the
    table prefpool reads (rows in order, the schema's features), and prefpool still finds the manifest."""
    from datasets import Features, load_dataset

    from prefpool.pipeline.io.manifest import load_manifest
    from prefpool.pipeline.io.schemas import get_schema

    manifest = load_manifest(folder)
    assert manifest is not None, f"{folder}: prefpool finds no manifest"
    expected = read_table(folder)
    features = Features.from_arrow_schema(get_schema(manifest.identity.schema))
    assert [p.name for p in Path(folder).iterdir() if not p.name.startswith(".")] == [
        p.name for p in Path(folder).iterdir() if p.suffix == ".parquet"
    ], "only Parquet shards beside the hidden .prefpool/"
    for args, kwargs in (((str(folder),), {}), (("parquet",), {"data_dir": str(folder)})):
        loaded = load_dataset(*args, **kwargs, cache_dir=str(cache_dir))
        assert list(loaded) == ["train"], (args, kwargs, list(loaded))
        train = loaded["train"]
        assert train.features == features, (args, kwargs)
        assert train.num_rows == expected.num_rows == manifest.total_rows
        assert train.to_list() == expected.to_pylist(), (args, kwargs)
