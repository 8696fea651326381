"""build: hand-made examples/candidates/logprobs tables (made-up log-probs) -> training tables."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner
from test_build_helpers import (
    candidates_row,
    example,
    fake_logp,
    logprob_rows,
    rows_of,
    shuffled,
    write_rows,
)

from prefpool.cli import app
from prefpool.pipeline.build import build
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.kinds.mcpo import SCHEMA as MCPO
from prefpool.pipeline.kinds.pairwise import SCHEMA as PAIRWISE

RANKED = example("ranked", [("best one", 0.9, 1), ("mid", 0.5, 2), ("worst answer", 0.1, 3)])
PAIRED = example("paired", [("x", None, None), ("y longer", None, None)], pairs=[(1, 0)])
TIED = example("tied", [("t1", 0.9, 1), ("t2", 0.9, 1), ("t3", 0.0, 2)])
EXAMPLES = [RANKED, PAIRED, TIED]
CANDIDATES = [candidates_row(RANKED, ["s1", "s2 two", "best one", "s3"]), candidates_row(TIED, ["u1"])]


def _inputs(tmp_path, examples=EXAMPLES, candidates=CANDIDATES, *, skip=frozenset(), seed=None, lp_rows=None):
    order = (lambda rows: rows) if seed is None else (lambda rows: shuffled(rows, seed))
    tag = "" if seed is None else f"-{seed}"
    ex = write_rows(tmp_path / f"ex{tag}", "examples", order(examples), stage="ingest")
    ca = write_rows(tmp_path / f"ca{tag}", "candidates", order(candidates), stage="generate")
    lp_rows = logprob_rows(examples, candidates, skip=skip) if lp_rows is None else lp_rows
    lp = write_rows(tmp_path / f"lp{tag}", "logprobs", order(lp_rows), stage="logprobs", rows_per_unit=3)
    return ex, ca, lp


def _texts(row):
    return row["chosen"][0]["content"], row["rejected"][0]["content"]


def test_pairwise_has_trl_columns_and_the_expected_pairs(tmp_path):
    ex, _, lp = _inputs(tmp_path)
    summary = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "out")
    table = read_table(summary.out, schema="pairwise")
    # TRL 1.16 DPOTrainer reads prompt/chosen/rejected (conversational) and ref_*_logps (float64)
    for name in ("prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps"):
        assert table.schema.field(name).type.equals(PAIRWISE.field(name).type)
    rows = rows_of(summary.out)
    by_prompt = {}
    for row in rows:
        assert row["chosen"][0]["role"] == "assistant" and len(row["chosen"]) == 1
        assert row["ref_chosen_logps"] == fake_logp(row["chosen"][0]["content"])
        assert row["ref_rejected_logps"] == fake_logp(row["rejected"][0]["content"])
        by_prompt.setdefault(row["prompt"][0]["content"], []).append(_texts(row))
    # explicit pair kept as given; ranked: best vs each worse; tie for best: lowest index, t1 vs t2 skipped
    assert by_prompt == {
        "paired": [("y longer", "x")],
        "ranked": [("best one", "mid"), ("best one", "worst answer")],
        "tied": [("t1", "t3")],
    }
    report = read_meta(summary.out, REPORT)
    assert report["pairs_explicit"] == 1 and report["pairs_derived"] == 3 and report["rows_written"] == 4


def test_output_does_not_depend_on_input_row_order(tmp_path):
    outs = []
    for seed in (None, 1, 2):
        ex, ca, lp = _inputs(tmp_path, seed=seed)
        for kind in ("pairwise", "mcpo", "mpo"):
            cand = ca if kind != "pairwise" else None
            outs.append(
                (
                    kind,
                    seed,
                    rows_of(
                        build(kind, examples=ex, logprobs=lp, candidates=cand, out=tmp_path / f"{kind}-{seed}").out
                    ),
                )
            )
    for kind in ("pairwise", "mcpo", "mpo"):
        results = [rows for k, _, rows in outs if k == kind]
        assert results[0] and all(r == results[0] for r in results)


def test_tie_policies(tmp_path):
    ex, _, lp = _inputs(tmp_path)
    dropped = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "drop", best_ties="drop")
    assert {r["prompt"][0]["content"] for r in rows_of(dropped.out)} == {"ranked", "paired"}
    assert dropped.report["dropped_tie_for_best"] == 1
    every = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "all", pair_mode="all")
    pairs = {_texts(r) for r in rows_of(every.out) if r["prompt"][0]["content"] == "tied"}
    assert pairs == {("t1", "t3"), ("t2", "t3")}  # never t1 vs t2: equal ranks are skipped
    mcpo = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "mcpo-drop", best_ties="drop", preferred="ranked")
    assert {r["preferred"] for r in rows_of(mcpo.out)} == {"best one"}
    assert mcpo.report["dropped_tie_for_best"] == 1 and mcpo.report["dropped_no_ranked_answer"] == 1


def test_rank_by_score(tmp_path):
    ex, _, lp = _inputs(tmp_path, examples=[example("s", [("lo", 0.1, None), ("hi", 0.8, None)])], candidates=[])
    rows = rows_of(build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "o", rank_by="score").out)
    assert [_texts(r) for r in rows] == [("hi", "lo")]


def test_missing_logprob_errors_naming_the_prompt_or_is_dropped_and_counted(tmp_path):
    ex, ca, lp = _inputs(tmp_path, skip={"mid", "s2 two"})
    with pytest.raises(PipelineInputError, match=rf"rejected text of prompt_id {RANKED['prompt_id']}.*'mid'"):
        build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "err")
    dropped = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "drop", missing="drop")
    assert ("best one", "mid") not in {_texts(r) for r in rows_of(dropped.out)}
    assert dropped.report["dropped_missing_logp_rejected"] == 1 and dropped.report["rows_written"] == 3
    with pytest.raises(PipelineInputError, match=r"pool text of prompt_id .*'s2 two'"):
        build("mcpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / "err2")
    pool = build("mcpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / "drop2", missing="drop")
    ranked = next(r for r in rows_of(pool.out) if r["prompt_id"] == RANKED["prompt_id"])
    assert ranked["pool"] == ["s1", "s3"] and pool.report["dropped_missing_logp_pool"] == 1


def test_nan_logprob_is_an_error(tmp_path):
    rows = logprob_rows(EXAMPLES, CANDIDATES)
    rows[2]["logp"] = math.nan
    ex, _, lp = _inputs(tmp_path, lp_rows=rows)
    with pytest.raises(PipelineInputError, match=f"nan for prompt_id {rows[2]['prompt_id']}"):
        build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "o")


def test_logprobs_from_different_cache_keys_are_refused(tmp_path):
    rows = logprob_rows(EXAMPLES, CANDIDATES)
    rows[0]["cache_key"] = "another-model"
    ex, _, lp = _inputs(tmp_path, lp_rows=rows)
    with pytest.raises(PipelineInputError, match="2 different cache keys"):
        build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "o")


def test_mcpo_from_ranked_answers_and_from_candidates(tmp_path):
    ex, ca, lp = _inputs(tmp_path)
    ranked = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "a", preferred="ranked")
    answers = {r["preferred"]: r for r in rows_of(ranked.out)}
    assert set(answers) == {"best one", "t1"}  # "paired" has no ranks: dropped and counted
    assert ranked.report["dropped_no_ranked_answer"] == 1
    assert answers["best one"]["pool"] == ["mid", "worst answer"]
    assert answers["best one"]["ref_pool_logps"] == [fake_logp("mid"), fake_logp("worst answer")]
    assert answers["best one"]["ref_preferred_logp"] == fake_logp("best one")
    assert answers["t1"]["pool"] == ["t3"]  # t2 tied with the preferred: not a negative
    gen = build("mcpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / "c", max_pool=2)
    rows = {r["preferred"]: r for r in rows_of(gen.out)}
    # the sample equal to the preferred text leaves the pool; then the first 2 samples are kept
    assert rows["best one"]["pool"] == ["s1", "s2 two"] and rows["best one"]["pool_num_tokens"] == [1, 2]
    assert rows["t1"]["pool"] == ["u1"]
    assert gen.report["pool_samples_equal_to_preferred"] == 1 and gen.report["pool_members_over_max_pool"] == 1
    assert read_table(gen.out).schema.equals(MCPO)


def test_empty_pool_policy(tmp_path):
    lonely = example("lonely", [("only", 1.0, 1)])
    ex, _, lp = _inputs(tmp_path, examples=[RANKED, lonely], candidates=[])
    out = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "drop")
    assert [r["preferred"] for r in rows_of(out.out)] == ["best one"]
    assert out.report["dropped_empty_pool"] == 1
    with pytest.raises(PipelineInputError, match=f"prompt_id {lonely['prompt_id']} has an empty pool"):
        build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "err", empty_pool="error")


def test_mpo_rows_carry_label_and_reference_samples(tmp_path):
    ex, ca, lp = _inputs(tmp_path)
    out = build("mpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / "o", label=0.75, max_pool=3)
    rows = rows_of(out.out)
    assert {r["prompt"][0]["content"] for r in rows} == {"ranked", "tied"}
    assert out.report["dropped_empty_samples"] == 1  # "paired" has no reference samples
    ranked = next(r for r in rows if r["prompt_id"] == RANKED["prompt_id"])
    assert ranked["label"] == 0.75 and ranked["ref_samples"] == ["s1", "s2 two", "best one"]
    assert ranked["ref_sample_logps"] == [fake_logp(t) for t in ranked["ref_samples"]]
    with pytest.raises(PipelineConfigError, match="needs --candidates"):
        build("mpo", examples=ex, logprobs=lp, out=tmp_path / "x")


def test_rerun_is_a_no_op_and_cli_builds(tmp_path):
    ex, ca, lp = _inputs(tmp_path)
    first = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "o")
    again = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "o")
    assert again.rows_written == first.rows_written == 3
    result = CliRunner().invoke(
        app,
        ["build", "--kind", "pairwise", "--examples", str(ex), "--logprobs", str(lp), "--out", str(tmp_path / "cli")],
    )
    assert result.exit_code == 0, result.output
    assert len(rows_of(tmp_path / "cli")) == 4
    bad = CliRunner().invoke(
        app, ["build", "--kind", "dpo", "--examples", str(ex), "--logprobs", str(lp), "--out", str(tmp_path / "bad")]
    )
    assert bad.exit_code == 2 and "'dpo' is not one of 'pairwise', 'mcpo', 'mpo'" in bad.output


def _many(count: int = 12):
    """Ranked examples with candidate pools, one candidates row without an example, one text without a log-prob."""
    examples = [
        example(
            f"prompt {i}",
            [(f"good {i}", 0.9, 1), (f"ok {i}", 0.5, 2), (f"bad {i} " * (i % 3 + 1), 0.1, 3)],
            pairs=[(1, 2)] if i % 4 == 0 else (),
        )
        for i in range(count)
    ]
    candidates = [candidates_row(ex, [f"s{i}a", f"s{i}b", f"good {i}"]) for i, ex in enumerate(examples)]
    candidates.append(candidates_row(example("orphan", []), ["o1"]))
    return examples, candidates


@pytest.mark.parametrize(
    ("kind", "with_candidates"), [("pairwise", False), ("mcpo", False), ("mcpo", True), ("mpo", True)]
)
def test_shard_runs_merged_equal_one_run(tmp_path, kind, with_candidates):
    """build --shard i/3 for each i, merged: the unsharded run's rows, order, units and report."""
    from prefpool.pipeline.io.ids import stable_bucket
    from prefpool.pipeline.io.manifest import load_manifest
    from prefpool.pipeline.merge import merge

    examples, candidates = _many()
    ex, ca, lp = _inputs(tmp_path, examples, candidates, skip={"ok 5", "s7b"})
    args = {
        "examples": ex,
        "logprobs": lp,
        "candidates": ca if with_candidates else None,
        "missing": "drop",
        "rows_per_unit": 4,
    }
    one = build(kind, out=tmp_path / "one", **args)
    parts = [build(kind, out=tmp_path / f"s{i}", shard=f"{i}/3", **args) for i in range(3)]
    assert all(0 < p.rows_written < one.rows_written for p in parts)
    assert sum(p.rows_written for p in parts) == one.rows_written
    for i, part in enumerate(parts):  # each shard holds exactly its bucket's prompts
        assert {stable_bucket(r["prompt_id"], 3) for r in rows_of(part.out)} == {i}
    merged = merge([p.out for p in reversed(parts)], tmp_path / "merged")
    assert read_table(tmp_path / "merged").equals(read_table(one.out))
    report = read_meta(tmp_path / "merged", REPORT)
    assert report == read_meta(one.out, REPORT)
    assert (
        report["examples_rows"] == len(examples)
        and report["dropped_missing_logp_" + ("rejected" if kind in ("pairwise", "mpo") else "pool")] == 1
    )
    want = load_manifest(one.out)
    assert merged.identity == want.identity and [s.rows for s in merged.shards] == [s.rows for s in want.shards]
    # the merged folder has the unsharded identity: rebuilding into it finds it complete
    assert build(kind, out=tmp_path / "merged", **args).rows_written == one.rows_written


def test_shard_filter_matches_stable_bucket_and_cli_shard(tmp_path):
    import polars as pl

    from prefpool.pipeline.build import _shard_filter
    from prefpool.pipeline.io.ids import ShardSpec, stable_bucket

    ids = [f"{i:032x}" for i in range(200)] * 2  # repeated ids, as in a logprobs table
    frame = pl.LazyFrame({"prompt_id": ids})
    for index in range(3):
        kept = frame.filter(_shard_filter(ShardSpec(index, 3))).collect(engine="streaming")["prompt_id"].to_list()
        assert kept == [p for p in ids if stable_bucket(p, 3) == index]
    assert _shard_filter(ShardSpec(0, 1)) is None
    ex, _, lp = _inputs(tmp_path, *_many())
    result = CliRunner().invoke(
        app,
        [
            "build",
            "--kind",
            "pairwise",
            "--examples",
            str(ex),
            "--logprobs",
            str(lp),
            "--out",
            str(tmp_path / "cli"),
            "--shard",
            "1/2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert {stable_bucket(r["prompt_id"], 2) for r in rows_of(tmp_path / "cli")} == {1}
    bad = CliRunner().invoke(
        app,
        [
            "build",
            "--kind",
            "pairwise",
            "--examples",
            str(ex),
            "--logprobs",
            str(lp),
            "--out",
            str(tmp_path / "bad"),
            "--shard",
            "2/2",
        ],
    )
    assert bad.exit_code == 2 and "0 <= i < N" in bad.output


def test_mcpo_preferred_auto_takes_a_pairs_chosen_answer_where_no_answer_is_ranked(tmp_path):
    ex, ca, lp = _inputs(tmp_path)
    auto = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "auto")
    rows = {r["preferred"]: r for r in rows_of(auto.out)}
    assert set(rows) == {"best one", "t1", "y longer"}  # "paired": its pair (1, 0) gives y0 = "y longer"
    assert rows["y longer"]["pool"] == ["x"] and rows["best one"]["pool"] == ["mid", "worst answer"]
    assert auto.report["preferred_from_pair"] == 1 and auto.report["dropped_no_ranked_answer_or_pair"] == 0


def test_mcpo_preferred_chosen_over_a_generated_pool_is_spin_like(tmp_path):
    """Plain prompt/chosen/rejected rows (no ranks, no scores) + generated samples: y0 = the dataset's chosen."""
    plain = [
        example("p1", [("good", None, None), ("bad", None, None)], pairs=[(0, 1)]),
        example("p2", [("meh", None, None), ("fine", None, None)], pairs=[(1, 0)]),
    ]
    cands = [candidates_row(plain[0], ["g1", "good", "g2"]), candidates_row(plain[1], ["h1"])]
    ex, ca, lp = _inputs(tmp_path, examples=plain, candidates=cands)
    with pytest.raises(PipelineInputError, match=r"dropped_no_ranked_answer: 2 \(.*--preferred chosen"):
        build("mcpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / "ranked", preferred="ranked")
    assert not (tmp_path / "ranked").exists()
    for preferred in ("chosen", "auto"):
        out = build("mcpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / preferred, preferred=preferred)
        rows = {r["preferred"]: r["pool"] for r in rows_of(out.out)}
        assert rows == {"good": ["g1", "g2"], "fine": ["h1"]}


def test_build_with_no_row_exits_2_naming_the_reasons_and_the_flag(tmp_path):
    """UltraFeedback-like pairs ranked by score only: the default --rank-by rank finds no ranked answer."""
    scored = [example(f"u{i}", [("hi", 0.9, None), ("lo", 0.1, None)]) for i in range(3)]
    ex, ca, lp = _inputs(tmp_path, examples=scored, candidates=[])
    args = ["build", "--examples", str(ex), "--logprobs", str(lp)]
    for kind in ("mcpo", "pairwise"):
        result = CliRunner().invoke(app, [*args, "--kind", kind, "--out", str(tmp_path / kind)])
        assert result.exit_code == 2, result.output
        assert "made no row from the 3 examples rows" in result.output and "--rank-by score" in result.output
        assert "Traceback" not in result.output and not (tmp_path / kind).exists()
    ok = CliRunner().invoke(app, [*args, "--kind", "mcpo", "--rank-by", "score", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0 and len(rows_of(tmp_path / "ok")) == 3
