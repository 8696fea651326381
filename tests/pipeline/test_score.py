"""The score stage: a reward function from a test module, a tiny reward model, resume, shards, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from test_build_helpers import candidates_row, example, write_rows

from prefpool.cli import app
from prefpool.core.errors import UserCodeError
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.stage_run import StageRun
from prefpool.pipeline.merge import merge
from prefpool.pipeline.score import score

torch.set_num_threads(1)


def count_good(prompt: list[dict], text: str) -> float:
    """The reward the tests use: how many times the word "good" occurs."""
    return float(text.split().count("good"))


def count_good_per_prompt_word(prompt: list[dict], text: str) -> float:
    return count_good(prompt, text) / len(prompt[0]["content"].split())


def not_finite(prompt: list[dict], text: str) -> float:
    return math.nan if "good" in text else 1.0


def raises_on_good_good(prompt: list[dict], text: str) -> float:
    if text.startswith("good good"):
        raise KeyError("no rule for repeats")
    return 1.0


FN = "test_score:count_good"
EXAMPLES = [
    example(
        f"question {i}",
        [
            (f"answer {i}", None, None),
            (f"good answer {i}", None, None),
            (f"good good {i}", None, None),
            (f"good answer {i}", None, None),
        ],
    )
    for i in range(9)
]


@pytest.fixture
def ex(tmp_path):
    return write_rows(tmp_path / "ex", "examples", EXAMPLES, stage="ingest")


def _scores(folder) -> dict[tuple[str, str], float]:
    rows = read_table(folder, schema="scores").to_pylist()
    assert len({(r["prompt_id"], r["completion_id"]) for r in rows}) == len(rows)
    assert [(r["prompt_id"], r["completion_id"]) for r in rows] == sorted(
        (r["prompt_id"], r["completion_id"]) for r in rows
    )
    return {(r["prompt_id"], r["completion_id"]): r["score"] for r in rows}


def test_reward_function_scores_every_distinct_answer(ex, tmp_path):
    summary = score(ex, out=tmp_path / "s", reward_fn=FN)
    values = _scores(summary.out)
    # 9 prompts x 3 distinct texts (the duplicate answer is scored once)
    assert summary.rows == summary.computed == len(values) == 27
    for row in EXAMPLES:
        for answer in row["answers"]:
            assert values[(row["prompt_id"], completion_id(answer["text"]))] == answer["text"].split().count("good")
    manifest = load_manifest(summary.out)
    scorer = manifest.identity.config["scorer"]
    assert scorer["kind"] == "function" and scorer["name"] == FN and len(scorer["source_sha256"]) == 64
    assert manifest.identity.inputs["schema"] == "examples"


def test_function_given_by_file_path_and_another_scorer_is_refused(ex, tmp_path):
    by_path = score(ex, out=tmp_path / "p", reward_fn=f"{__file__}:count_good")
    assert _scores(by_path.out) == _scores(score(ex, out=tmp_path / "m", reward_fn=FN).out)
    with pytest.raises(OutputConflictError, match="config"):
        score(ex, out=tmp_path / "m", reward_fn="test_score:count_good_per_prompt_word")
    other = score(ex, out=tmp_path / "m", reward_fn="test_score:count_good_per_prompt_word", overwrite=True)
    assert max(_scores(other.out).values()) == 1.0  # 2 "good" / 2 prompt words


def test_resume_after_a_crash_equals_one_run(ex, tmp_path, monkeypatch):
    whole = _scores(score(ex, out=tmp_path / "whole", reward_fn=FN, rows_per_unit=5).out)
    real, calls = StageRun.write, []

    def crash_after_two(self, unit, table):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(unit.seq)
        real(self, unit, table)

    monkeypatch.setattr(StageRun, "write", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        score(ex, out=tmp_path / "s", reward_fn=FN, rows_per_unit=5)
    assert load_manifest(tmp_path / "s") is None
    monkeypatch.setattr(StageRun, "write", real)
    resumed = score(ex, out=tmp_path / "s", reward_fn=FN, rows_per_unit=5)
    assert (resumed.units_skipped, resumed.units_written, resumed.computed) == (2, 4, 17)
    assert _scores(resumed.out) == whole
    again = score(ex, out=tmp_path / "s", reward_fn=FN, rows_per_unit=5)
    assert (again.units_written, again.computed) == (0, 0)


def test_shard_runs_merged_equal_one_run(ex, tmp_path):
    whole = score(ex, out=tmp_path / "whole", reward_fn=FN, rows_per_unit=4).out
    parts = [score(ex, out=tmp_path / f"part{i}", reward_fn=FN, shard=f"{i}/3", rows_per_unit=4).out for i in range(3)]
    assert sum(len(_scores(p)) for p in parts) == 27
    merged = merge(parts, tmp_path / "merged")
    assert read_table(tmp_path / "merged").equals(read_table(whole))
    assert merged.identity.config == load_manifest(whole).identity.config


def test_candidates_table_scores_samples(tmp_path):
    cand = write_rows(
        tmp_path / "ca",
        "candidates",
        [candidates_row(EXAMPLES[0], ["good", "good good", "good", "bad"])],
        stage="generate",
    )
    summary = score(cand, out=tmp_path / "s", reward_fn=FN)
    pid = EXAMPLES[0]["prompt_id"]
    assert _scores(summary.out) == {(pid, completion_id(t)): v for t, v in (("good", 1), ("good good", 2), ("bad", 0))}
    assert load_manifest(summary.out).identity.inputs["schema"] == "candidates"


def test_non_finite_score_names_the_row(ex, tmp_path):
    with pytest.raises(
        PipelineInputError,
        match=r"score is nan for prompt_id [0-9a-f]{32}, completion_id [0-9a-f]{32} \(.*ex/part-\S+\.parquet, "
        r"row \d+ \(0-based\), column 'answers'\)",
    ):
        score(ex, out=tmp_path / "s", reward_fn="test_score:not_finite")
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_reward_function_that_raises_names_the_row_and_exits_2(ex, tmp_path):
    """The user's function raising is the user's error: the pair it raised on, the exception, exit 2."""
    with pytest.raises(UserCodeError) as err:
        score(ex, out=tmp_path / "s", reward_fn="test_score:raises_on_good_good", rows_per_unit=5)
    text = str(err.value)
    assert "reward_fn 'test_score:raises_on_good_good' raised KeyError: 'no rule for repeats'" in text
    pid, cid = text.split("on prompt_id ")[1].split(" (")[0].split(", completion_id ")
    row = next(r for r in EXAMPLES if r["prompt_id"] == pid)
    assert completion_id(f"good good {row['prompt'][0]['content'].split()[1]}") == cid  # the pair it raised on
    assert isinstance(err.value.__cause__, KeyError)  # --debug shows the function's own traceback
    result = CliRunner().invoke(
        app, ["score", str(ex), "--reward-fn", "test_score:raises_on_good_good", "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 2 and "raised KeyError" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"reward_fn": FN, "reward_model": "x"}, "exactly one"),
        ({"reward_fn": "count_good"}, "module:function"),
        ({"reward_fn": "no_such_module_xyz:f"}, "cannot import"),
        ({"reward_fn": "test_score:nothing_here"}, "not a callable"),
        ({"reward_fn": FN, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(ex, tmp_path, kwargs, match):
    with pytest.raises(PipelineConfigError, match=match):
        score(ex, out=tmp_path / "s", **kwargs)


def test_a_logprobs_or_build_table_is_refused(ex, tmp_path):
    scored = score(ex, out=tmp_path / "s", reward_fn=FN).out
    with pytest.raises(PipelineInputError, match="'scores' table"):
        score(scored, out=tmp_path / "again", reward_fn=FN)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """A tiny one-label LlamaForSequenceClassification with the tiny tokenizer (pad_token_id set)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from prefpool.testing import build_tiny_llama

    base = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "lm", num_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = LlamaConfig.from_pretrained(base, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    out = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_reward_model_values_equal_a_direct_forward(ex, tmp_path, reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    batched = _scores(score(ex, out=tmp_path / "b", reward_model=reward_model, batch_size=5).out)
    single = _scores(score(ex, out=tmp_path / "one", reward_model=reward_model, batch_size=1).out)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    assert len(batched) == 27
    for row in EXAMPLES[:3]:
        for answer in row["answers"][:3]:
            ids = tokenizer.apply_chat_template(
                [*row["prompt"], {"role": "assistant", "content": answer["text"]}],
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                direct = model(**ids).logits[0, 0].item()
            key = (row["prompt_id"], completion_id(answer["text"]))
            assert batched[key] == pytest.approx(direct, abs=1e-5)
            assert single[key] == pytest.approx(direct, abs=1e-5)
    scorer = load_manifest(tmp_path / "b").identity.config["scorer"]
    assert scorer["kind"] == "model" and len(scorer["weights_sha256"]) == 64
    # batch_size is not part of the identity: a rerun with another one resumes (nothing to do)
    assert score(ex, out=tmp_path / "b", reward_model=reward_model, batch_size=2).computed == 0


def test_reward_model_with_several_labels_is_refused(ex, tmp_path, reward_model):
    config = json.loads((reward_model / "config.json").read_text())
    bad = tmp_path / "rm2"
    bad.mkdir()
    for path in reward_model.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    config["id2label"] = {"0": "a", "1": "b"}
    config["label2id"] = {"a": 0, "b": 1}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineConfigError, match="2 labels"):
        score(ex, out=tmp_path / "s", reward_model=bad)


def test_cli(ex, tmp_path):
    result = CliRunner().invoke(app, ["score", str(ex), "--reward-fn", FN, "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "score:" in result.output and len(_scores(tmp_path / "s")) == 27
    bad = CliRunner().invoke(app, ["score", str(ex), "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "exactly one" in bad.output
