"""The real data slices in ../shared/data go through ingest (skipped when absent)."""

from __future__ import annotations

import json

import pytest
from pipeline_helpers import SHARED_DATA, rows_by_id

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.ids import normalize_messages, prompt_id
from prefpool.pipeline.io.layout import REPORT, read_meta

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (a fresh clone)")


def test_ultrafeedback_pairwise(tmp_path):
    out = tmp_path / "uf"
    summary = ingest(SHARED_DATA / "ultrafeedback", format="pairwise", out=out)
    report = read_meta(out, REPORT)
    assert report["rows_read"] == 1200
    assert summary.rows_written + report["rows_dropped"] + report["duplicate_rows_merged"] == 1200
    # the slice has 5 rows whose chosen and rejected are the same text
    assert report["dropped_rows"]["chosen_equals_rejected"] == 5
    rows = list(rows_by_id(out).values())
    assert all(len(r["answers"]) >= 2 and r["pairs"] for r in rows)
    assert all(a["score"] is not None for r in rows for a in r["answers"])  # from `metadata`


def test_alpaca_eval_ranked_pools_join_the_prompts(tmp_path):
    ranked, prompts = tmp_path / "ranked", tmp_path / "prompts"
    ingest(SHARED_DATA / "alpaca_eval" / "alpaca_eval_ranked_pools.jsonl", format="ranked", out=ranked)
    ingest(SHARED_DATA / "prompts" / "alpaca_eval_805_prompts.jsonl", format="prompts", out=prompts)
    pools, plain = rows_by_id(ranked), rows_by_id(prompts)
    assert len(pools) == len(plain) == 805 and pools.keys() == plain.keys()
    first = json.loads((SHARED_DATA / "prompts" / "alpaca_eval_805_prompts.jsonl").open().readline())
    row = pools[prompt_id(normalize_messages(first["instruction"]))]
    assert {a["source"] for a in row["answers"]} >= {"gpt4_1106_preview"}
    assert all(a["rank"] is not None and a["score"] is not None for a in row["answers"])
    report = read_meta(ranked, REPORT)
    assert report["dropped_answers"] == {"empty_completion": 22}
