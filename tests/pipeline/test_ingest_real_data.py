"""The real data slices in ../shared/data go through ingest (skipped when absent)."""

from __future__ import annotations

import json

import pytest
from pipeline_helpers import SHARED_DATA, rows_by_id

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.ids import normalize_messages, prompt_id
from prefpool.pipeline.io.layout import REPORT, read_meta

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (a fresh clone)")


def lines(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_ultrafeedback_folder_reads_its_train_split_detected_as_pairwise(tmp_path):
    """train_clean.jsonl and eval_clean.jsonl are the folder's train and test splits (the Hub's naming)."""
    folder = SHARED_DATA / "ultrafeedback"
    out, held_out = tmp_path / "uf", tmp_path / "uf-test"
    summary = ingest(folder, out=out)
    assert (summary.format, summary.split) == ("pairwise", "train")
    report = read_meta(out, REPORT)
    assert report["rows_read"] == lines(folder / "train_clean.jsonl") == 1000
    assert summary.rows_written + report["rows_dropped"] + report["duplicate_rows_merged"] == 1000
    test = ingest(folder, split="test", out=held_out)
    assert test.rows_read == lines(folder / "eval_clean.jsonl") == 200
    # 5 rows of the slice (4 in train, 1 in eval) have the same text as chosen and rejected
    test_report = read_meta(held_out, REPORT)
    assert report["dropped_rows"]["chosen_equals_rejected"] + test_report["dropped_rows"]["chosen_equals_rejected"] == 5
    rows = list(rows_by_id(out).values())
    assert all(len(r["answers"]) >= 2 and r["pairs"] for r in rows)
    assert all(a["score"] is not None for r in rows for a in r["answers"])  # from `metadata`
    assert {r["source"] for r in rows} == {"train_clean.jsonl"}


def test_alpaca_eval_ranked_pools_join_the_prompts(tmp_path):
    ranked, prompts = tmp_path / "ranked", tmp_path / "prompts"
    pools_summary = ingest(SHARED_DATA / "alpaca_eval" / "alpaca_eval_ranked_pools.jsonl", out=ranked)
    prompts_summary = ingest(SHARED_DATA / "prompts" / "alpaca_eval_805_prompts.jsonl", out=prompts)
    assert (pools_summary.format, prompts_summary.format) == ("ranked", "prompts")  # detected
    pools, plain = rows_by_id(ranked), rows_by_id(prompts)
    assert len(pools) == len(plain) == 805 and pools.keys() == plain.keys()
    first = json.loads((SHARED_DATA / "prompts" / "alpaca_eval_805_prompts.jsonl").open().readline())
    row = pools[prompt_id(normalize_messages(first["instruction"]))]
    assert {a["source"] for a in row["answers"]} >= {"gpt4_1106_preview"}
    assert all(a["rank"] is not None and a["score"] is not None for a in row["answers"])
    report = read_meta(ranked, REPORT)
    assert report["dropped_answers"] == {"empty_completion": 22} and report["dropped_values"] == {}
    # 805 prompts, 12 candidates each but 4 prompts with 11: every one kept, dropped or merged as a duplicate
    kept = sum(len(r["answers"]) for r in pools.values())
    assert kept + 22 + report["duplicate_answers_removed"] == 805 * 12 - 4
