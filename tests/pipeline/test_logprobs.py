"""The logprobs stage on a tiny local model: values, batching, truncation, resume, shards, cache, errors."""

from __future__ import annotations

import json
import math
import shutil

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.errors import MissingInputError
from prefpool.pipeline.engines import logprob_engines as logprobs_engine
from prefpool.pipeline.engines.hf_engine import HF
from prefpool.pipeline.engines.registry import ENGINES
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.layout import MANIFEST, REPORT, read_meta
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.schemas import CANDIDATES
from prefpool.pipeline.io.stage_run import StageRun, plan_units
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.merge import merge
from prefpool.pipeline.model.scoring import plan_batches
from prefpool.testing import build_tiny_llama

torch.set_num_threads(1)

LONG_PROMPT = "the old map " * 30  # ~90 tokens: dropped when max_length is small


def _records(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "prompt": f"What is {i} plus {i}?",
                "chosen": f"{2 * i}",
                "rejected": "the cat sees a red apple " * (i % 3 + 1),
            }
        )
    rows.append({"prompt": LONG_PROMPT, "chosen": "a map", "rejected": "the cat sees a red apple"})
    return rows


def _ingest(tmp_path, name: str, records: list[dict]):
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / name
    ingest(src, format="pairwise", out=out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """7 prompts x 2 answers: 14 distinct (prompt, completion) pairs."""
    return _ingest(tmp_path_factory.mktemp("data"), "examples", _records(6))


@pytest.fixture
def spy(monkeypatch):
    """Counts the sequences the hf engine scores."""
    seen = []
    real = logprobs_engine.HFEngine.score

    def score(self, sequences, starts, *, per_token):
        seen.append(len(sequences))
        return real(self, sequences, starts, per_token=per_token)

    monkeypatch.setattr(logprobs_engine.HFEngine, "score", score)
    return seen


def _values(folder) -> dict:
    return {(r["prompt_id"], r["completion_id"]): r for r in read_table(folder, schema="logprobs").to_pylist()}


def _assert_same_rows(a, b, tol=1e-5):
    assert list(a) == list(b)
    for key in a:
        ra, rb = a[key], b[key]
        assert {k: v for k, v in ra.items() if k != "logp"} == {k: v for k, v in rb.items() if k != "logp"}
        assert ra["logp"] == pytest.approx(rb["logp"], rel=1e-6, abs=tol)


def test_values_equal_a_direct_forward_and_log_softmax(tiny, examples, tmp_path):
    """logp = sum over completion tokens of log_softmax(logits)[prev position, token], one sequence at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=256, per_token=True)
    assert (summary.pairs, summary.rows, summary.computed, summary.dropped_long_prompt) == (14, 14, 14, 0)
    rows = _values(tmp_path / "lp")
    assert summary.tokens == sum(r["num_tokens"] for r in rows.values()) and summary.tokens_per_s > 0
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    checked = 0
    for example in read_table(examples).to_pylist():
        for answer in example["answers"]:
            row = rows[(example["prompt_id"], completion_id(answer["text"]))]
            prompt = tok.apply_chat_template(example["prompt"], add_generation_prompt=True, return_dict=False)
            full = tok.apply_chat_template(
                example["prompt"] + [{"role": "assistant", "content": answer["text"]}], return_dict=False
            )
            ids = torch.tensor([full])
            with torch.no_grad():
                logp = model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]  # (T-1,)
            expected = logp[len(prompt) - 1 :]
            assert row["num_tokens"] == len(full) - len(prompt) == len(row["token_logps"])
            # per token 1e-5 absolute; a float32 sum near -150 has an ulp of 1.5e-5, hence rel 1e-6 too
            assert row["logp"] == pytest.approx(expected.sum().item(), rel=1e-6, abs=1e-5)
            assert row["token_logps"] == pytest.approx(expected.tolist(), abs=1e-5)
            assert not row["truncated"] and row["cache_key"] == summary_key(tmp_path / "lp")
            checked += 1
    assert checked == 14


def summary_key(folder) -> str:
    return read_meta(folder, MANIFEST)["identity"]["config"]["cache_key"]


def test_batching_does_not_change_values(tiny, examples, tmp_path):
    logprobs(examples, model=tiny, out=tmp_path / "one", max_length=256, batch_tokens=1)
    logprobs(examples, model=tiny, out=tmp_path / "big", max_length=256, batch_tokens=100_000)
    _assert_same_rows(_values(tmp_path / "one"), _values(tmp_path / "big"))


def test_batches_are_sorted_by_length_within_the_token_budget():
    lengths = [5, 1, 4, 4, 2, 9]
    batches = plan_batches(lengths, 8)
    assert batches == [[1, 4], [2, 3], [0], [5]]  # 9 > budget: a batch of its own
    for batch in batches[:-1]:
        assert max(lengths[i] for i in batch) * len(batch) <= 8


def test_truncation_and_long_prompts(tiny, examples, tmp_path):
    summary = logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=24)
    rows = list(_values(tmp_path / "lp").values())
    truncated = [r for r in rows if r["truncated"]]
    assert summary.dropped_long_prompt == 2  # the long prompt's two answers
    assert (summary.rows, summary.truncated) == (12, len(truncated))
    assert 0 < len(truncated) < 12
    full = _values_at(tiny, examples, tmp_path)
    for r in rows:
        whole = full[(r["prompt_id"], r["completion_id"])]
        assert r["truncated"] == (r["num_tokens"] < whole["num_tokens"])
    report = read_meta(tmp_path / "lp", REPORT)
    assert (report["dropped_long_prompt"], report["truncated"]) == (2, len(truncated))
    with pytest.raises(PipelineInputError, match="prompt_id .* no completion token within max_length=24"):
        logprobs(examples, model=tiny, out=tmp_path / "strict", max_length=24, long_prompts="error")


def _values_at(tiny, examples, tmp_path):
    logprobs(examples, model=tiny, out=tmp_path / "full", max_length=256)
    return _values(tmp_path / "full")


def test_resume_after_a_crash_equals_one_run(tiny, examples, tmp_path, monkeypatch, spy):
    expected = _values_at(tiny, examples, tmp_path)
    real_write = StageRun.write

    def crash_after_first(self, unit, table):
        if self.units_written == 1:
            raise RuntimeError("simulated crash")
        real_write(self, unit, table)

    monkeypatch.setattr(StageRun, "write", crash_after_first)
    with pytest.raises(RuntimeError, match="simulated crash"):
        logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=256, rows_per_unit=4)
    monkeypatch.setattr(StageRun, "write", real_write)
    # the unfinished run is known by its run marker (.prefpool/run.json): another cache key is refused
    with pytest.raises(OutputConflictError, match="different max_length"):
        logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=128, rows_per_unit=4)
    spy.clear()
    resumed = logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=256, rows_per_unit=4)
    assert (resumed.units_skipped, resumed.units_written) == (1, 3)
    assert sum(spy) == resumed.computed == 10  # the first unit's 4 rows are not scored again
    table = read_table(tmp_path / "lp")
    keys = zip(table["prompt_id"].to_pylist(), table["completion_id"].to_pylist(), strict=True)
    assert table.num_rows == len(set(keys))  # no duplicates
    _assert_same_rows(_values(tmp_path / "lp"), expected)


def test_shard_runs_merged_equal_one_run(tiny, examples, tmp_path):
    one = logprobs(examples, model=tiny, out=tmp_path / "one", max_length=256, rows_per_unit=4)
    parts = [
        logprobs(examples, model=tiny, out=tmp_path / f"s{i}", max_length=256, rows_per_unit=4, shard=f"{i}/2")
        for i in range(2)
    ]
    assert 0 < parts[0].rows < one.rows and parts[0].rows + parts[1].rows == one.rows
    merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    _assert_same_rows(_values(tmp_path / "merged"), _values(tmp_path / "one"))
    again = logprobs(examples, model=tiny, out=tmp_path / "merged", max_length=256, rows_per_unit=4)
    assert again.units_written == 0  # the merged folder is the unsharded run's output


def test_cache_scores_only_new_pairs(tiny, examples, tmp_path, spy):
    small = _ingest(tmp_path, "small", _records(3))  # 3 prompts + the long one: 8 pairs, all in `examples` too
    logprobs(small, model=tiny, out=tmp_path / "lp", max_length=256)
    assert sum(spy) == 8
    spy.clear()
    with_cache = logprobs(examples, model=tiny, out=tmp_path / "new", max_length=256, cache=tmp_path / "lp")
    assert (with_cache.cache_hits, with_cache.computed, sum(spy)) == (8, 6, 6)
    spy.clear()
    in_place = logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=256)  # grown input, same folder
    assert (in_place.cache_hits, in_place.computed, sum(spy)) == (8, 6, 6)
    _assert_same_rows(_values(tmp_path / "lp"), _values(tmp_path / "new"))
    spy.clear()
    all_cached = logprobs(examples, model=tiny, out=tmp_path / "again", max_length=256, cache=tmp_path / "new")
    assert (all_cached.computed, all_cached.cache_hits, all_cached.tokens_per_s, spy) == (0, 14, 0.0, [])
    _assert_same_rows(_values(tmp_path / "again"), _values(tmp_path / "new"))
    per_token = logprobs(
        examples, model=tiny, out=tmp_path / "pt", max_length=256, per_token=True, cache=tmp_path / "lp"
    )
    assert per_token.computed == 14  # cached rows lack per-token values
    row = next(iter(_values(tmp_path / "pt").values()))
    assert math.fsum(row["token_logps"]) == pytest.approx(row["logp"], abs=1e-4)


def test_another_model_is_refused(tiny, examples, tmp_path):
    logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=256)
    other = build_tiny_llama(tmp_path / "other", seed=1)
    with pytest.raises(OutputConflictError, match="different weights_sha256 "):
        logprobs(examples, model=other, out=tmp_path / "lp", max_length=256)
    with pytest.raises(OutputConflictError, match="different max_length"):
        logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=128)
    replaced = logprobs(examples, model=other, out=tmp_path / "lp", max_length=256, overwrite=True)
    assert (replaced.computed, replaced.cache_hits) == (14, 0)


def test_non_finite_log_prob_names_the_row(tiny, examples, tmp_path, monkeypatch):
    class NanScorer:
        def score(self, sequences, starts, *, per_token):
            return logprobs_engine.Scores([float("nan")] * len(sequences), [1] * len(sequences), None)

    class NanEngine(HF):
        def scorer(self, source, **_):
            return NanScorer()

    monkeypatch.setitem(ENGINES, "hf", NanEngine())
    with pytest.raises(PipelineInputError, match=r"log-prob is nan for prompt_id [0-9a-f]{32}, completion_id"):
        logprobs(examples, model=tiny, out=tmp_path / "lp", max_length=256)


def test_candidates_table_scores_samples(tiny, tmp_path):
    rows = [
        {
            "prompt_id": "p1",
            "prompt": [{"role": "user", "content": "Name a colour."}],
            "samples": [
                {"text": t, "seed": i, "finish_reason": "stop", "num_tokens": 1}
                for i, t in enumerate(["Blue.", "Red.", "Blue."])
            ],
        }
    ]
    run = StageRun(tmp_path / "cand", stage="generate", schema="candidates", config={}, inputs={}, rows_per_unit=10)
    units = plan_units(rows, key_of=lambda r: r["prompt_id"], rows_per_unit=10)
    for unit in run.pending(units):
        run.write(unit, pa.Table.from_pylist(list(unit.items), schema=CANDIDATES))
    run.finish()
    summary = logprobs(tmp_path / "cand", model=tiny, out=tmp_path / "lp", max_length=256)
    assert summary.rows == 2  # "Blue." twice is one pair
    assert set(_values(tmp_path / "lp")) == {("p1", completion_id("Blue.")), ("p1", completion_id("Red."))}


def test_cli(tiny, examples, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(
        app, ["logprobs", str(examples), "--model", str(tiny), "--out", str(tmp_path / "lp"), "--max-length", "256"]
    )
    assert ok.exit_code == 0, ok.output
    assert "logprobs: 14 rows" in ok.output and "computed=14" in ok.output
    bad = runner.invoke(
        app, ["logprobs", str(tmp_path / "nothing"), "--model", str(tiny), "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "manifest.json" in bad.output
    wrong = runner.invoke(app, ["logprobs", str(tmp_path / "lp"), "--model", str(tiny), "--out", str(tmp_path / "y")])
    assert wrong.exit_code == 2 and "logprobs reads 'examples' or 'candidates'" in wrong.output


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"engine": "no-such-engine"}, "engine must be one of"),
        ({"dtype": "fp8"}, "dtype must be one of"),
        ({"long_prompts": "keep"}, "long_prompts must be one of"),
        ({"max_length": 1}, "max_length >= 2"),
    ],
)
def test_bad_arguments_fail_before_any_work(tiny, examples, tmp_path, kwargs, match):
    with pytest.raises(PipelineConfigError, match=match):
        logprobs(examples, model=tiny, out=tmp_path / "lp", **kwargs)
    assert not (tmp_path / "lp").exists()


def test_model_folder_without_weights_is_refused(tiny, examples, tmp_path):
    shutil.copytree(tiny, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(PipelineConfigError, match="needs config.json and \\*.safetensors"):
        logprobs(examples, model=tmp_path / "m", out=tmp_path / "lp")
    with pytest.raises(MissingInputError, match="no such folder; expected a local model folder"):
        logprobs(examples, model=tmp_path / "missing", out=tmp_path / "lp")


def test_bfloat16_is_close_to_float32_under_its_own_cache_key(tiny, examples, tmp_path):
    logprobs(examples, model=tiny, out=tmp_path / "f32", max_length=256)
    logprobs(examples, model=tiny, out=tmp_path / "bf16", max_length=256, dtype="bfloat16")
    f32, bf16 = _values(tmp_path / "f32"), _values(tmp_path / "bf16")
    assert summary_key(tmp_path / "f32") != summary_key(tmp_path / "bf16")
    for key, row in f32.items():
        assert bf16[key]["num_tokens"] == row["num_tokens"]
        assert bf16[key]["logp"] == pytest.approx(row["logp"], rel=0.05)
