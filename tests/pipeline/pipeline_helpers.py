"""Paths and helpers shared by the pipeline tests (a plain module: `conftest` is not importable by name)."""

from __future__ import annotations

from pathlib import Path

from prefpool.pipeline.io.read import read_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
# The repo is /work/main and the shared data /work/shared/data: `../shared/data` from the repo root.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def rows_by_id(folder: Path) -> dict[str, dict]:
    return {row["prompt_id"]: row for row in read_table(folder).to_pylist()}
