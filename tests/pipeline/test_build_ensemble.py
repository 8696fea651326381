"""build --ensemble-rule: several scorers' scores combined (mean of per-prompt z-scores, majority vote)."""

from __future__ import annotations

import statistics

import pytest
from test_build_helpers import example, logprob_rows, rows_of, write_rows

from prefpool.pipeline.build import build
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.kinds.ensemble import combine
from prefpool.pipeline.score import score


def words(prompt: list[dict], text: str) -> float:
    return float(len(text.split()))


def few_words(prompt: list[dict], text: str) -> float:
    return -float(len(text.split()))


TEXTS = ["good", "good good x y", "x", "x y z"]
ROW = example("q", [(t, None, None) for t in TEXTS])
# per scorer, in TEXTS order
VALUES = {
    "test_score:count_good": [1, 2, 0, 0],
    "test_build_ensemble:words": [1, 4, 1, 3],
    "test_build_ensemble:few_words": [-1, -4, -1, -3],
}


@pytest.fixture
def tables(tmp_path):
    ex = write_rows(tmp_path / "ex", "examples", [ROW], stage="ingest")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows([ROW]), stage="logprobs")
    scores = [score(ex, out=tmp_path / f"s{i}", reward_fn=fn).out for i, fn in enumerate(VALUES)]
    return ex, lp, scores


def _combined(frame) -> list[float]:
    by_id = {r["completion_id"]: r["score"] for r in frame.collect().to_dicts()}
    return [by_id[completion_id(t)] for t in TEXTS]


def test_zmean_is_the_mean_of_per_prompt_z_scores(tables):
    _, _, scores = tables

    def z(values):
        mean, std = statistics.fmean(values), statistics.pstdev(values)
        return [(v - mean) / std for v in values]

    two = list(VALUES.values())[:2]
    expected = [(a + b) / 2 for a, b in zip(z(two[0]), z(two[1]), strict=True)]
    frame, source, scorers = combine(scores[:2], "zmean")
    assert _combined(frame) == pytest.approx(expected, abs=1e-12)
    # by hand: z(count_good) = [.3015, 1.5076, -.9045, -.9045], z(words) = [-.9623, 1.3471, -.9623, .5774]
    assert _combined(frame) == pytest.approx([-0.3304, 1.4274, -0.9334, -0.1636], abs=1e-4)
    assert source == "examples" and [s["name"] for s in scorers] == list(VALUES)[:2]


def test_vote_counts_pairwise_majority_wins(tables):
    _, _, scores = tables
    frame, _, _ = combine(scores, "vote")
    # "good good x y" beats each other answer on 2 of 3 scorers; "good" beats "x y z" (count_good, few_words);
    # "good" vs "x" and "x" vs "x y z" have no strict majority
    assert _combined(frame) == [1.0, 3.0, 0.0, 0.0]


def test_build_records_the_rule_and_scorers(tables, tmp_path):
    ex, lp, scores = tables
    out = build("mcpo", examples=ex, logprobs=lp, scores=scores, ensemble_rule="vote", out=tmp_path / "m")
    (row,) = rows_of(out.out)
    assert row["preferred"] == "good good x y" and row["pool"] == ["good", "x", "x y z"]
    manifest = load_manifest(out.out)
    assert manifest.identity.config["ensemble"] == "vote"
    recorded = manifest.provenance["scores_ensemble"]
    assert recorded["rule"] == "vote" and [s["name"] for s in recorded["scorers"]] == list(VALUES)
    assert out.report["scores_ensemble"] == recorded


def test_several_scorers_need_a_rule_and_a_rule_needs_several(tables, tmp_path):
    ex, lp, scores = tables
    with pytest.raises(PipelineInputError, match="--ensemble-rule"):
        build("pairwise", examples=ex, logprobs=lp, scores=scores, out=tmp_path / "a")
    with pytest.raises(PipelineInputError, match="two or more scorers"):
        build("pairwise", examples=ex, logprobs=lp, scores=scores[:1], ensemble_rule="zmean", out=tmp_path / "b")
    with pytest.raises(PipelineConfigError, match="give two or more --scores"):
        build("pairwise", examples=ex, logprobs=lp, ensemble_rule="zmean", out=tmp_path / "c")
