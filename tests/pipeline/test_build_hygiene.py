"""build's pool hygiene and pair rules on hand-made tables: every rule with its count in report.json."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner
from test_build_helpers import example, logprob_rows, rows_of, shuffled, write_rows

from prefpool.cli import app
from prefpool.pipeline.build import build
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.score import score

FN = "test_score:count_good"  # the reward: how many times "good" occurs


def samples_row(ex: dict, samples: list[tuple[str, str]]) -> dict:
    """A candidates row; ``samples``: (text, finish_reason)."""
    return {
        "prompt_id": ex["prompt_id"],
        "prompt": ex["prompt"],
        "samples": [
            {"text": t, "seed": i, "finish_reason": f, "num_tokens": len(t.split())} for i, (t, f) in enumerate(samples)
        ],
    }


# mcpo with an unranked pool of samples: preferred = the dataset's best answer ("best")
POOLED = example("pooled", [("best", None, 1), ("other", None, 2)])
POOLED_SAMPLES = [("s1", "stop"), ("s1", "stop"), ("", "stop"), ("  ", "stop"), ("cut", "length"), ("best", "stop")]
POOLED_SAMPLES += [("s2", "stop")]
SAME = example("same", [("fine", None, 1), ("worse", None, 2)])
SAME_SAMPLES = [("same", "stop")] * 3


def _tables(tmp_path, examples, candidates):
    ex = write_rows(tmp_path / "ex", "examples", examples, stage="ingest")
    ca = write_rows(tmp_path / "ca", "candidates", candidates, stage="generate")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows(examples, candidates), stage="logprobs")
    return ex, ca, lp


@pytest.fixture
def pooled(tmp_path):
    return _tables(tmp_path, [POOLED, SAME], [samples_row(POOLED, POOLED_SAMPLES), samples_row(SAME, SAME_SAMPLES)])


def _by_prompt(folder) -> dict[str, dict]:
    return {r["prompt"][0]["content"]: r for r in rows_of(folder)}


def test_unranked_pool_defaults_drop_empty_and_identical_pools_and_keep_duplicates_and_truncated(pooled, tmp_path):
    ex, ca, lp = pooled
    out = build("mcpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / "m")
    rows = _by_prompt(out.out)
    # "" and "  " dropped (empty); "best" is the preferred text (never a negative); "s1" twice: draws, kept
    assert list(rows) == ["pooled"] and rows["pooled"]["pool"] == ["s1", "s1", "cut", "s2"]
    report = read_meta(out.out, REPORT)
    assert report["samples_empty_dropped"] == 2
    assert report["samples_truncated"] == 1
    assert report["pool_samples_equal_to_preferred"] == 1
    # "same" x3 is a prompt whose samples are all one text: dropped as SimPO does, not as an empty pool
    assert report["dropped_identical_samples"] == 1 and report["dropped_empty_pool"] == 0
    assert report["config"]["empty"] == "drop" and report["config"]["duplicates"] == "keep"


def test_unranked_pool_collapse_duplicates_drop_truncated_keep_identical(pooled, tmp_path):
    ex, ca, lp = pooled
    out = build(
        "mcpo",
        examples=ex,
        logprobs=lp,
        candidates=ca,
        out=tmp_path / "m",
        duplicates="collapse",
        truncated="drop",
        identical_pools="keep",
        empty="keep",
    )
    rows = _by_prompt(out.out)
    assert rows["pooled"]["pool"] == ["s1", "", "  ", "s2"]
    # identical pool kept and collapsed to its one text
    assert rows["same"]["pool"] == ["same"]
    report = out.report
    assert report["samples_duplicates_collapsed"] == 1 + 2
    assert report["samples_truncated_dropped"] == 1 and report["samples_truncated"] == 1
    assert "samples_empty_dropped" not in report and "dropped_identical_samples" not in report


SCORED = example("scored", [("unused", None, None)])
# count_good scores 2 (cut at max_new_tokens), 1, 0, 0 (empty); reference tokens = words: 3, 2, 1, 0
SCORED_SAMPLES = [("x good good", "length"), ("x good", "stop"), ("x", "stop"), ("", "stop")]


@pytest.fixture
def scored(tmp_path):
    ex, ca, lp = _tables(tmp_path, [SCORED], [samples_row(SCORED, SCORED_SAMPLES)])
    return ex, ca, lp, score(ca, out=tmp_path / "s", reward_fn=FN).out


@pytest.mark.parametrize(
    ("options", "preferred", "pool"),
    [
        ({}, "x good good", ["x good", "x"]),  # truncated kept; "" dropped as empty
        ({"truncated": "drop"}, "x good", ["x"]),
        # penalize 1.5: keys 2 - 1.5 = 0.5, 1, 0
        ({"truncated": "penalize", "truncated_penalty": 1.5}, "x good", ["x good good", "x"]),
        # score - 0.6 * tokens: 2 - 1.8 = 0.2, 1 - 1.2 = -0.2, 0 - 0.6 = -0.6
        ({"length_penalty": 0.6}, "x good good", ["x good", "x"]),
        # score - 1.2 * tokens: 2 - 3.6 = -1.6, 1 - 2.4 = -1.4, 0 - 1.2 = -1.2
        ({"length_penalty": 1.2}, "x", ["x good good", "x good"]),
    ],
)
def test_scored_samples_truncated_and_length_penalty_pick_y0(scored, tmp_path, options, preferred, pool):
    ex, ca, lp, s = scored
    out = build("mcpo", examples=ex, logprobs=lp, candidates=ca, scores=s, out=tmp_path / "m", **options)
    (row,) = rows_of(out.out)
    assert (row["preferred"], row["pool"]) == (preferred, pool)
    assert out.report["samples_empty_dropped"] == 1 and out.report["samples_truncated"] == 1


def test_penalize_and_length_penalty_need_scores(pooled, tmp_path):
    ex, ca, lp = pooled
    with pytest.raises(PipelineConfigError, match="penalize"):
        build("mcpo", examples=ex, logprobs=lp, candidates=ca, out=tmp_path / "a", truncated="penalize")
    with pytest.raises(PipelineConfigError, match="length_penalty"):
        build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "b", length_penalty=0.5)
    with pytest.raises(PipelineConfigError, match="min_margin"):
        build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "c", min_margin=-1.0)


def test_identical_texts_are_never_a_negative_and_empty_answers_leave(tmp_path):
    dup = example("dup", [("same", None, 1), ("same", None, 2), ("z", None, 3)])
    blank = example("blank", [("good", None, 1), ("", None, 2), ("fine", None, 3)])
    ex = write_rows(tmp_path / "ex", "examples", [dup, blank], stage="ingest")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows([dup, blank]), stage="logprobs")
    pairs = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "p")
    found = sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows_of(pairs.out))
    assert found == [("good", "fine"), ("same", "z")]
    assert pairs.report["pairs_identical_texts_dropped"] == 1 and pairs.report["answers_empty_dropped"] == 1
    pools = build("mcpo", examples=ex, logprobs=lp, out=tmp_path / "m")
    assert {r["preferred"]: r["pool"] for r in rows_of(pools.out)} == {"same": ["z"], "good": ["fine"]}
    assert pools.report["pool_samples_equal_to_preferred"] == 1


# rank_by="score": keys 0.9, 0.5, 0.1, 0.85
RULES = example("rules", [("a", 0.9, None), ("b", 0.5, None), ("c", 0.1, None), ("d", 0.85, None)])


def _pair_set(folder) -> list[tuple[str, str]]:
    return sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows_of(folder))


@pytest.mark.parametrize(
    ("options", "expected", "below_margin"),
    [
        ({}, [("a", "b"), ("a", "c"), ("a", "d")], None),
        ({"pair_mode": "best-vs-worst"}, [("a", "c")], None),
        # margins: a-b 0.4, a-c 0.8, a-d 0.05
        ({"min_margin": 0.3}, [("a", "b"), ("a", "c")], 1),
        # every pair differing by >= 0.3: a-b .4, a-c .8, b-c .4, d-b .35, d-c .75 (a-d .05 is not)
        ({"pair_mode": "all", "min_margin": 0.3}, [("a", "b"), ("a", "c"), ("b", "c"), ("d", "b"), ("d", "c")], 1),
        ({"pair_mode": "best-vs-worst", "min_margin": 0.9}, [], 3),
    ],
)
def test_pair_rules_against_hand_computation(tmp_path, options, expected, below_margin):
    ex = write_rows(tmp_path / "ex", "examples", [RULES], stage="ingest")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows([RULES]), stage="logprobs")
    if not expected:  # a build that makes no row is refused, naming why
        with pytest.raises(PipelineInputError, match=rf"made no row.*pairs_below_margin: {below_margin} "):
            build("pairwise", examples=ex, logprobs=lp, rank_by="score", out=tmp_path / "p", **options)
        assert not (tmp_path / "p").exists()
        return
    out = build("pairwise", examples=ex, logprobs=lp, rank_by="score", out=tmp_path / "p", **options)
    assert _pair_set(out.out) == expected
    assert out.report.get("pairs_below_margin") == below_margin


def test_best_vs_random_draws_by_hash_independent_of_row_order(tmp_path):
    other = example("other", [("p", 0.9, None), ("q", 0.2, None), ("r", 0.1, None), ("s", 0.3, None)])
    rows = [RULES, other]
    lp_rows = logprob_rows(rows)
    found = []
    for seed in (None, 1):
        order = rows if seed is None else shuffled(rows, seed)
        ex = write_rows(tmp_path / f"ex{seed}", "examples", order, stage="ingest")
        lp = write_rows(tmp_path / f"lp{seed}", "logprobs", lp_rows if seed is None else shuffled(lp_rows, seed))
        out = build(
            "pairwise",
            examples=ex,
            logprobs=lp,
            rank_by="score",
            pair_mode="best-vs-random",
            pair_seed=7,
            out=tmp_path / f"p{seed}",
        )
        found.append(_pair_set(out.out))
    # the rule by hand: the worse answer with the smallest sha256("7:<prompt_id>:<completion_id>")

    def drawn(ex: dict, worse: list[str]) -> str:
        return min(worse, key=lambda t: hashlib.sha256(f"7:{ex['prompt_id']}:{completion_id(t)}".encode()).hexdigest())

    assert found[0] == found[1] == sorted([("a", drawn(RULES, ["b", "c", "d"])), ("p", drawn(other, ["q", "r", "s"]))])


def test_mpo_pairs_follow_the_rule(tmp_path):
    samples = [samples_row(RULES, [("r1", "stop"), ("r2", "stop")])]
    ex, ca, lp = _tables(tmp_path, [RULES], samples)
    out = build(
        "mpo", examples=ex, logprobs=lp, candidates=ca, rank_by="score", pair_mode="best-vs-worst", out=tmp_path / "m"
    )
    assert _pair_set(out.out) == [("a", "c")]
    # the reference samples are left as drawn
    assert [r["ref_samples"] for r in rows_of(out.out)] == [["r1", "r2"]]


def test_cli_help_states_the_defaults_and_bad_choice_exits_2(pooled, tmp_path):
    text = CliRunner().invoke(app, ["build", "--help"], terminal_width=200).output
    for option in (
        "--empty [drop|keep]",
        "--duplicates [keep|collapse]",
        "--truncated [keep|drop|penalize]",
        "--identical-pools [drop|keep]",
        "best-vs-worst",
        "--min-margin",
        "--length-penalty",
    ):
        assert option in text, option
    ex, ca, lp = pooled
    result = CliRunner().invoke(
        app,
        [
            "build",
            "--kind",
            "mcpo",
            "--examples",
            str(ex),
            "--logprobs",
            str(lp),
            "--candidates",
            str(ca),
            "--truncated",
            "penalize",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 2 and "penalize" in result.output
