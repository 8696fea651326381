"""build --scores: answers or generated samples ranked by a `score` table (reward: count of "good")."""

from __future__ import annotations

import json
import math

import pytest
from test_build_helpers import candidates_row, example, logprob_rows, rows_of, write_rows

from prefpool.pipeline.build import build
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.score import score

FN = "test_score:count_good"
# The examples' own ranks say "plain" is best; the scores say "good good".
RANKED = example("ranked", [("plain", None, 1), ("good", None, 2), ("good good", None, 3)])
# An explicit pair ("y" over "x good"): with --scores, pairs are derived from the scores instead.
PAIRED = example("paired", [("x good", None, None), ("y", None, None)], pairs=[(1, 0)])
EXAMPLES = [RANKED, PAIRED]
# scores 1, 2, 0, 2 (duplicate of the best), 2 (a different text tied for best)
SAMPLES = ["s good", "s good good", "s", "s good good", "t good good"]
# the best text is drawn twice but no other text ties it
DUPLICATED = ["a good", "a good", "b"]
CANDIDATES = [candidates_row(RANKED, SAMPLES), candidates_row(PAIRED, DUPLICATED)]


@pytest.fixture
def tables(tmp_path):
    ex = write_rows(tmp_path / "ex", "examples", EXAMPLES, stage="ingest")
    ca = write_rows(tmp_path / "ca", "candidates", CANDIDATES, stage="generate")
    lp = write_rows(tmp_path / "lp", "logprobs", logprob_rows(EXAMPLES, CANDIDATES), stage="logprobs")
    return (
        ex,
        ca,
        lp,
        score(ex, out=tmp_path / "s_ex", reward_fn=FN).out,
        score(ca, out=tmp_path / "s_ca", reward_fn=FN).out,
    )


def _pairs(folder) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for row in rows_of(folder):
        found.setdefault(row["prompt"][0]["content"], []).append(
            (row["chosen"][0]["content"], row["rejected"][0]["content"])
        )
    return found


def test_pairwise_from_answer_scores_overrides_ranks_and_explicit_pairs(tables, tmp_path):
    ex, _, lp, s_ex, _ = tables
    plain = build("pairwise", examples=ex, logprobs=lp, out=tmp_path / "plain")
    assert _pairs(plain.out)["ranked"][0][0] == "plain" and _pairs(plain.out)["paired"] == [("y", "x good")]
    scored = build("pairwise", examples=ex, logprobs=lp, scores=s_ex, out=tmp_path / "scored")
    assert _pairs(scored.out) == {
        "ranked": [("good good", "plain"), ("good good", "good")],
        "paired": [("x good", "y")],
    }
    report = read_meta(scored.out, REPORT)
    assert report["config"]["rank_by"] == "score" and report["config"]["scores"] == "examples"
    assert report["answers_without_score"] == 0 and report["pairs_explicit"] == 0


def test_mcpo_from_sample_scores_prefers_the_highest_scored_sample(tables, tmp_path):
    ex, ca, lp, _, s_ca = tables
    out = build("mcpo", examples=ex, logprobs=lp, candidates=ca, scores=s_ca, out=tmp_path / "m").out
    rows = {r["prompt"][0]["content"]: r for r in rows_of(out)}
    # tie for best between "s good good" (index 1) and "t good good" (index 4): first = lowest index
    assert rows["ranked"]["preferred"] == "s good good"
    assert rows["ranked"]["preferred_id"] == completion_id("s good good")
    # the pool ranks strictly below the best: "t good good", tied for best, is no negative
    assert rows["ranked"]["pool"] == ["s good", "s"]
    assert rows["paired"]["preferred"] == "a good" and rows["paired"]["pool"] == ["b"]


def test_ties_for_best_sample_drop_the_row_but_duplicates_are_no_tie(tables, tmp_path):
    ex, ca, lp, _, s_ca = tables
    out = build("mcpo", examples=ex, logprobs=lp, candidates=ca, scores=s_ca, best_ties="drop", out=tmp_path / "m")
    assert [r["preferred"] for r in rows_of(out.out)] == ["a good"]
    assert out.report["dropped_tie_for_best"] == 1


def test_pairwise_from_sample_scores_skips_ties(tables, tmp_path):
    ex, ca, lp, _, s_ca = tables
    out = build("pairwise", examples=ex, logprobs=lp, candidates=ca, scores=s_ca, out=tmp_path / "p").out
    assert _pairs(out) == {"ranked": [("s good good", "s good"), ("s good good", "s")], "paired": [("a good", "b")]}


def test_sample_scores_need_candidates_and_not_mpo(tables, tmp_path):
    ex, ca, lp, _, s_ca = tables
    with pytest.raises(PipelineConfigError, match="need --candidates"):
        build("mcpo", examples=ex, logprobs=lp, scores=s_ca, out=tmp_path / "a")
    with pytest.raises(PipelineConfigError, match="--kind pairwise, mcpo or kto"):
        build("mpo", examples=ex, logprobs=lp, candidates=ca, scores=s_ca, out=tmp_path / "b")


def test_non_finite_score_is_an_error_naming_the_row(tables, tmp_path):
    ex, _, lp, _, _ = tables
    bad = write_rows(
        tmp_path / "bad",
        "scores",
        [
            {"prompt_id": RANKED["prompt_id"], "completion_id": completion_id("plain"), "score": math.inf},
        ],
        stage="score",
    )
    with pytest.raises(PipelineInputError, match=f"score is inf for prompt_id {RANKED['prompt_id']}"):
        build("pairwise", examples=ex, logprobs=lp, scores=bad, out=tmp_path / "x")


def test_pipeline_yaml_chains_score_between_generate_and_logprobs(tmp_path):
    from prefpool.pipeline.run import load_pipeline

    def plan(sections: dict) -> dict[str, dict]:
        path = tmp_path / "p.yaml"
        path.write_text(json.dumps({"workdir": str(tmp_path / "w"), "model": "m", **sections}))  # JSON is YAML
        return {c.label: c.kwargs for c in load_pipeline(path)}

    w = tmp_path / "w"
    calls = plan(
        {
            "ingest": {"source": "d.jsonl", "format": "ranked"},
            "generate": {"n": 2},
            "score": {"reward_fn": FN},
            "logprobs": {},
            "build": {"kind": ["pairwise", "mcpo", "mpo"]},
        }
    )
    assert list(calls) == [
        "ingest",
        "generate",
        "score",
        "logprobs[ingest]",
        "logprobs[generate]",
        "build[pairwise]",
        "build[mcpo]",
        "build[mpo]",
    ]
    assert calls["score"]["input_dir"] == str(w / "generate") and calls["score"]["out"] == str(w / "score")
    assert "model" not in calls["score"]  # the policy model is not a reward model
    for kind in ("pairwise", "mcpo"):  # sample scores: build needs the samples too
        assert calls[f"build[{kind}]"]["scores"] == str(w / "score")
        assert calls[f"build[{kind}]"]["candidates"] == str(w / "generate")
    assert "scores" not in calls["build[mpo]"]
    # without generate, score ranks the ingested answers; pairwise needs no candidates then
    calls = plan(
        {
            "ingest": {"source": "d.jsonl", "format": "ranked"},
            "score": {"reward_fn": FN},
            "logprobs": {},
            "build": {"kind": "pairwise"},
        }
    )
    assert calls["score"]["input_dir"] == str(w / "ingest")
    assert calls["build"]["scores"] == str(w / "score") and "candidates" not in calls["build"]
