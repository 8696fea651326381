"""``build --kind mcpo`` carries the scores it ranked by (``preferred_score``, ``pool_scores``: InfoNCA's
targets) and leaves them null where a row's answers are not all scored; a table written before these
columns existed still reads, as unscored."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from test_build_helpers import candidates_row, example, logprob_rows, rows_of, write_rows

from prefpool.pipeline.build import build
from prefpool.pipeline.io.layout import MANIFEST, find_meta
from prefpool.pipeline.io.manifest import file_sha256
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.kinds import get_kind
from prefpool.pipeline.kinds.source import open_table
from prefpool.pipeline.score import score

SCORED = example("scored", [("best one", 0.9, 3), ("mid", 0.5, 1), ("worst answer", 0.1, 2)])
# explicit pair, the rejected answer unscored: its row's answers are not all scored
PAIRED = example("paired", [("x", None, None), ("y longer", 0.3, None)], pairs=[(1, 0)])
EXAMPLES = [SCORED, PAIRED]
CANDIDATES = [candidates_row(SCORED, ["s good", "s good good", "s"])]


@pytest.fixture
def inputs(tmp_path):
    ex = write_rows(tmp_path / "ex", "examples", EXAMPLES, stage="ingest")
    ca = write_rows(tmp_path / "ca", "candidates", CANDIDATES, stage="generate")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows(EXAMPLES, CANDIDATES), stage="logprobs")
    return ex, ca, lp


def _by_preferred(folder) -> dict[str, dict]:
    return {r["preferred"]: r for r in rows_of(folder)}


def test_mcpo_ranked_by_score_carries_the_scores_in_pool_order(inputs, tmp_path):
    ex, _, lp = inputs
    rows = _by_preferred(build("mcpo", examples=ex, logprobs=lp, rank_by="score", out=tmp_path / "s").out)
    best = rows["best one"]
    assert best["pool"] == ["mid", "worst answer"]
    assert (best["preferred_score"], best["pool_scores"]) == (0.9, [0.5, 0.1])
    assert set(rows) == {"best one"}  # "paired": its one scored answer is the best, nothing below it


def test_the_scores_are_the_ranking_key_after_the_length_penalty(inputs, tmp_path):
    ex, _, lp = inputs
    out = build("mcpo", examples=ex, logprobs=lp, rank_by="score", length_penalty=0.01, out=tmp_path / "p").out
    best = _by_preferred(out)["best one"]
    tokens = [best["preferred_num_tokens"], *best["pool_num_tokens"]]
    expected = [s - 0.01 * n for s, n in zip([0.9, 0.5, 0.1], tokens, strict=True)]
    assert [best["preferred_score"], *best["pool_scores"]] == pytest.approx(expected)


def test_mcpo_ranked_by_rank_or_with_an_unranked_pool_has_no_scores(inputs, tmp_path):
    ex, ca, lp = inputs
    by_rank = _by_preferred(build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "r").out)
    assert by_rank["mid"]["pool"] == ["best one", "worst answer"]
    assert all(r["preferred_score"] is None and r["pool_scores"] is None for r in by_rank.values())
    generated = build("mcpo", examples=ex, logprobs=lp, candidates=ca, rank_by="score", out=tmp_path / "g")
    row = _by_preferred(generated.out)["best one"]
    assert row["pool"] == ["s good", "s good good", "s"]  # samples from generate: no score
    assert (row["preferred_score"], row["pool_scores"]) == (None, None)


def test_mcpo_pairs_rejected_without_score_leaves_the_row_unscored(inputs, tmp_path):
    ex, _, lp = inputs
    rows = _by_preferred(
        build("mcpo", examples=ex, logprobs=lp, rank_by="score", preferred="chosen", out=tmp_path / "c").out
    )
    assert rows["y longer"]["pool"] == ["x"]
    assert (rows["y longer"]["preferred_score"], rows["y longer"]["pool_scores"]) == (None, None)


def test_mcpo_from_a_scores_table_over_the_candidates(inputs, tmp_path):
    """Scored samples stand in for the answers: y0 is the best sample, the pool the others, with scores."""
    ex, ca, lp = inputs
    scores = score(ca, out=tmp_path / "sc", reward_fn="test_score:count_good").out
    table = build("mcpo", examples=ex, logprobs=lp, candidates=ca, scores=scores, out=tmp_path / "m")
    row = _by_preferred(table.out)["s good good"]
    assert row["pool"] == ["s good", "s"]
    assert (row["preferred_score"], row["pool_scores"]) == (2.0, [1.0, 0.0])


def _drop_columns(folder, names: list[str]) -> None:
    """Rewrite ``folder``'s shards without ``names`` (a table written before they existed), its manifest
    updated to the new sizes and hashes."""
    manifest_path = find_meta(folder, MANIFEST)
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(names).replace_schema_metadata(table.schema.metadata), path)
        entry["bytes"], entry["sha256"] = path.stat().st_size, file_sha256(path)
    manifest_path.write_text(json.dumps(manifest))


def test_an_mcpo_table_without_the_score_columns_reads_as_unscored(inputs, tmp_path):
    ex, _, lp = inputs
    out = build("mcpo", examples=ex, logprobs=lp, rank_by="score", out=tmp_path / "old").out
    _drop_columns(out, ["preferred_score", "pool_scores"])
    assert "pool_scores" not in pq.read_table(next(out.glob("*.parquet"))).column_names
    table = read_table(out, schema="mcpo")
    assert table.column("pool_scores").null_count == table.num_rows == 1
    assert table.column("preferred_score").null_count == 1
    rows = open_table(out).read().to_pylist()
    decoded = [get_kind("mcpo").decode(row) for row in rows]
    assert [(d.answers[0].text, d.scores) for d in decoded] == [("best one", None)]
