"""score --judge: an LLM judge through the generation engine, strict parsing, both orders, resume.

Most tests run the judge's real path (its tokenizer, its chat template, the stage, the report) with a
scripted engine in place of the hf engine: it reads the rendered judge prompt and replies by a fixed
rule, some replies unparsable, so the counts can be computed by hand. One test runs a tiny random
Llama through the real hf engine.
"""

from __future__ import annotations

import pytest
import torch
from test_build_helpers import example, write_rows

from prefpool.pipeline.engines.generation import Completion
from prefpool.pipeline.engines.hf_engine import HF
from prefpool.pipeline.engines.judge import parse_rating, parse_verdict
from prefpool.pipeline.engines.registry import ENGINES
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.stage_run import StageRun
from prefpool.pipeline.score import score

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("output", "rating"),
    [
        ("Rating: 7", 7),
        ("  rating: 10.\n", 10),
        ("The answer is fine. Rating: 1", 1),
        ("Rating: 11", None),
        ("Rating: 0", None),
        ("Rating: 7/10", None),
        ("Rating: 3 or Rating: 5", None),
        ("I would give it 7", None),
        ("", None),
    ],
)
def test_parse_rating(output, rating):
    assert parse_rating(output) == rating


@pytest.mark.parametrize(
    ("output", "verdict"),
    [
        ("Verdict: A", "A"),
        ("verdict: b.", "B"),
        ("Verdict: [[B]]", "B"),
        ("Verdict: C", None),
        ("Verdict: A\nVerdict: B", None),
        ("A is better", None),
    ],
)
def test_parse_verdict(output, verdict):
    assert parse_verdict(output) == verdict


# answers and what the scripted judge says of them (pointwise)
POINTWISE_REPLY = {"good": "Rating: 8", "bad": "Rating: 2", "junk": "hmm, hard to say", "long": "Rating: 8 Rating: 3"}
EXAMPLES = [
    example("question one", [("ref one", None, None), ("good one", None, None), ("junk one", None, None)]),
    example("question two", [("ref two", None, None), ("bad two", None, None), ("long two", None, None)]),
]


def scripted_reply(prompt: str) -> str:
    """The judge's rule, from the rendered prompt text."""
    if "[Answer A]" not in prompt:
        answer = prompt.split("[Answer]\n", 1)[1].split("\n", 1)[0]
        return POINTWISE_REPLY.get(answer.split()[0], "Rating: 5")
    a = prompt.split("[Answer A]\n", 1)[1].split("\n", 1)[0]
    b = prompt.split("[Answer B]\n", 1)[1].split("\n", 1)[0]
    if "junk" in (a + b):
        return "no idea"
    if "bad" in (a + b):
        return "Verdict: A"  # position-biased: always the first
    return "Verdict: A" if "good" in a else "Verdict: B"


class ScriptedEngine:
    """Stands in for the hf engine: checks the request is the judge's chat template, greedy, and replies."""

    name = "hf"
    prompts: list[str] = []

    def __init__(self, info, **_):
        self.info = info

    def generate(self, requests, params, *, on_done):
        assert params.greedy and params.max_new_tokens == 32
        out = []
        for request in requests:
            text = self.info.tokenizer.decode(list(request.prompt_tokens))
            assert text.startswith("<|bos|><|user|>") and text.endswith("<|assistant|>"), text
            ScriptedEngine.prompts.append(text)
            reply = self.info.tokenizer(scripted_reply(text), add_special_tokens=False)["input_ids"]
            out.append(Completion(tuple(reply), "stop"))
            on_done(len(reply))
        return out


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory):
    from prefpool.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("judge") / "judge", num_layers=1)


@pytest.fixture
def scripted(monkeypatch):
    ScriptedEngine.prompts = []

    class Scripted(HF):
        def generator(self, info, **_):
            return ScriptedEngine(info)

    monkeypatch.setitem(ENGINES, "hf", Scripted())
    return ScriptedEngine


@pytest.fixture
def ex(tmp_path):
    return write_rows(tmp_path / "ex", "examples", EXAMPLES, stage="ingest")


def _scores(folder) -> dict[str, float]:
    return {r["completion_id"]: r["score"] for r in read_table(folder, schema="scores").to_pylist()}


def _cid(*texts):
    return {completion_id(t) for t in texts}


def test_pointwise_scores_parsed_ratings_and_counts_the_rest(ex, tmp_path, judge_model, scripted):
    out = score(ex, out=tmp_path / "s", judge=judge_model, rows_per_unit=2)
    values = _scores(out.out)
    # "junk one" (no rating) and "long two" (two ratings) are not scored
    assert values == {completion_id(t): v for t, v in [("ref one", 5), ("good one", 8), ("ref two", 5), ("bad two", 2)]}
    report = read_meta(out.out, REPORT)["judge"]
    assert report == {
        "mode": "pointwise",
        "answers": 6,
        "judged": 6,
        "scored": 4,
        "unparsable": 2,
        "unparsable_rate": 2 / 6,
    }
    assert out.rows == 4 and load_manifest(out.out).summary["rows"] == 4
    scorer = load_manifest(out.out).identity.config["scorer"]
    assert scorer["kind"] == "judge" and scorer["decoding"] == "greedy" and len(scorer["template_sha256"]) == 64
    assert len(scripted.prompts) == 6 and sum("question one" in p for p in scripted.prompts) == 3


def test_pairwise_judges_both_orders_against_the_rows_first_answer(ex, tmp_path, judge_model, scripted):
    out = score(ex, out=tmp_path / "s", judge=judge_model, judge_mode="pairwise")
    # "good one" wins as A and as B: 1; "bad two": the judge says A in both orders, one win each way: 0.5;
    # "junk one": unparsable; "long two" vs "ref two": B in both orders ("good" in neither): as A it loses,
    # as B it wins: 0.5. The references score 0.5 unjudged.
    assert _scores(out.out) == {
        completion_id("good one"): 1.0,
        completion_id("bad two"): 0.5,
        completion_id("long two"): 0.5,
        completion_id("ref one"): 0.5,
        completion_id("ref two"): 0.5,
    }
    report = read_meta(out.out, REPORT)["judge"]
    # 4 answers judged (the references are not): 3 scored, 1 unparsable
    assert (report["judged"], report["scored"], report["unparsable"], report["unparsable_rate"]) == (4, 3, 1, 0.25)
    assert (report["references"], report["orders_disagree"]) == (2, 2)
    assert len(scripted.prompts) == 8  # 4 answers x 2 orders; the references are not judged


def test_resume_after_a_crash_equals_one_run(ex, tmp_path, judge_model, scripted, monkeypatch):
    whole = score(ex, out=tmp_path / "whole", judge=judge_model, rows_per_unit=2)
    real = StageRun.write
    calls: list[int] = []

    def crash_after_one(self, unit, table):
        if calls:
            raise RuntimeError("simulated crash")
        calls.append(unit.seq)
        real(self, unit, table)

    monkeypatch.setattr(StageRun, "write", crash_after_one)
    with pytest.raises(RuntimeError, match="simulated crash"):
        score(ex, out=tmp_path / "s", judge=judge_model, rows_per_unit=2)
    monkeypatch.setattr(StageRun, "write", real)
    resumed = score(ex, out=tmp_path / "s", judge=judge_model, rows_per_unit=2)
    assert resumed.units_skipped == 1 and _scores(resumed.out) == _scores(whole.out)
    # the report counts the whole run, the unit written before the crash included
    assert read_meta(resumed.out, REPORT)["judge"] == read_meta(whole.out, REPORT)["judge"]
    assert score(ex, out=tmp_path / "s", judge=judge_model, rows_per_unit=2).computed == 0


def test_template_file_must_keep_the_fields(ex, tmp_path, judge_model):
    bad = tmp_path / "t.txt"
    bad.write_text("Rate {answer}. Reply Rating: N")
    with pytest.raises(PipelineConfigError, match=r"missing \{conversation\}"):
        score(ex, out=tmp_path / "s", judge=judge_model, judge_template=bad)
    with pytest.raises(PipelineConfigError, match="exactly one of"):
        score(ex, out=tmp_path / "s", judge=judge_model, reward_fn="test_score:count_good")


def test_a_tiny_random_llama_through_the_hf_engine(ex, tmp_path, judge_model):
    """The real engine: a random model's replies rarely parse; every answer is scored or counted."""
    out = score(ex, out=tmp_path / "s", judge=judge_model, judge_max_new_tokens=8)
    report = read_meta(out.out, REPORT)["judge"]
    assert report["scored"] + report["unparsable"] == report["judged"] == report["answers"] == 6
    assert report["scored"] == len(_scores(out.out))
    assert all(1 <= v <= 10 for v in _scores(out.out).values())
