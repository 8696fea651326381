"""The real slices in ../shared/data go through ingest -> build (skipped when absent).

The log-probs are MADE UP (-len(text)/10 for every answer text), written through
the real stage writer: the real `logprobs` stage needs a model.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from pipeline_helpers import SHARED_DATA
from test_build_helpers import CACHE_KEY, fake_logp, rows_of

from prefpool.pipeline.build import build
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.schemas import LOGPROBS
from prefpool.pipeline.io.stage_run import StageRun, plan_units

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (a fresh clone)")


def _made_up_logprobs(examples, out):
    rows = {}
    for ex in read_table(examples).to_pylist():
        for answer in ex["answers"]:
            cid = completion_id(answer["text"])
            rows[(ex["prompt_id"], cid)] = {
                "prompt_id": ex["prompt_id"],
                "completion_id": cid,
                "logp": fake_logp(answer["text"]),
                "num_tokens": len(answer["text"].split()),
                "truncated": False,
                "token_logps": None,
                "cache_key": CACHE_KEY,
            }
    items = [rows[k] for k in sorted(rows)]
    run = StageRun(out, stage="logprobs", schema="logprobs", config={"made_up": True}, inputs={}, rows_per_unit=50_000)
    for unit in run.pending(plan_units(items, key_of=lambda r: r["completion_id"], rows_per_unit=50_000)):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=LOGPROBS))
    run.finish()
    return out


def test_alpaca_eval_ranked_pools_to_mcpo_and_pairwise(tmp_path):
    ex = tmp_path / "ex"
    ingest(SHARED_DATA / "alpaca_eval" / "alpaca_eval_ranked_pools.jsonl", format="ranked", out=ex)
    lp = _made_up_logprobs(ex, tmp_path / "lp")
    mcpo = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "mcpo", max_pool=8)
    rows = rows_of(mcpo.out)
    assert mcpo.rows_written + mcpo.report["dropped_empty_pool"] == 805
    assert all(1 <= len(r["pool"]) <= 8 and len(r["pool"]) == len(r["ref_pool_logps"]) for r in rows)
    assert all(r["ref_preferred_logp"] == fake_logp(r["preferred"]) for r in rows)
    pairwise = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "pw")
    assert pairwise.rows_written == pairwise.report["pairs_derived"] > 805


def test_ultrafeedback_pairs_to_pairwise(tmp_path):
    ex = tmp_path / "ex"
    summary = ingest(SHARED_DATA / "ultrafeedback", format="pairwise", out=ex)
    lp = _made_up_logprobs(ex, tmp_path / "lp")
    out = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "pw")
    assert out.report["pairs_explicit"] >= summary.rows_written and out.report["pairs_derived"] == 0
    assert all(r["ref_chosen_logps"] == fake_logp(r["chosen"][0]["content"]) for r in rows_of(out.out))
