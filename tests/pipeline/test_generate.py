"""The generate stage on a tiny local model: schema, determinism, resume, shards, finish reasons."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefpool.pipeline import generate as generate_module
from prefpool.pipeline.engines.generation import Request
from prefpool.pipeline.engines.hf_generation import HFEngine
from prefpool.pipeline.engines.sampling import SamplingParams, sample_seed
from prefpool.pipeline.generate import generate
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.errors import PipelineConfigError, PipelineInputError
from prefpool.pipeline.io.layout import MANIFEST, REPORT, find_meta, read_meta
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.stage_run import StageRun
from prefpool.pipeline.merge import merge
from prefpool.pipeline.model.info import load_model_info
from prefpool.testing import build_tiny_llama

torch.set_num_threads(1)

N = 3
MAX_NEW = 12
# Prompts of clearly different token lengths, so a batch left-pads most of them.
PROMPTS = [
    "Hi.",
    "What is 2 plus 3?",
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}],
    "The cat likes a red apple. The dog sees the blue sky. What does the cat like?",
    "Repeat the word river.",
    "Give a word that rhymes with stone, then count its letters and say it in capital letters.",
]


def _write_jsonl(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    ingest(_write_jsonl(root / "p.jsonl", PROMPTS), format="prompts", out=root / "ex")
    return root / "ex"


@pytest.fixture(scope="module")
def reference(model, examples, tmp_path_factory):
    """One uninterrupted, unsharded run, batch 64; the other tests compare against it."""
    out = tmp_path_factory.mktemp("ref") / "cand"
    generate(examples, model=model, out=out, n=N, max_new_tokens=MAX_NEW, seed=7, batch_size=64, rows_per_unit=2)
    return out


def test_schema_counts_seeds_and_manifest(reference, examples):
    table = read_table(reference, schema="candidates")
    rows = table.to_pylist()
    inputs = {r["prompt_id"]: r["prompt"] for r in read_table(examples).to_pylist()}
    assert [r["prompt_id"] for r in rows] == sorted(inputs)
    for row in rows:
        assert row["prompt"] == inputs[row["prompt_id"]]
        assert [s["seed"] for s in row["samples"]] == [sample_seed(7, row["prompt_id"], i) for i in range(N)]
        for s in row["samples"]:
            assert s["finish_reason"] in ("stop", "length")
            assert s["num_tokens"] == MAX_NEW if s["finish_reason"] == "length" else s["num_tokens"] < MAX_NEW
    manifest = load_manifest(reference)
    config = manifest.identity.config
    assert (config["n"], config["seed"], config["max_new_tokens"], config["temperature"]) == (N, 7, MAX_NEW, 1.0)
    assert config["eos_token_ids"] == [2] and set(config["model"]) == {
        "weights_sha256",
        "tokenizer_sha256",
        "chat_template_sha256",
    }
    sampling = manifest.provenance["model"]["sampling"]
    assert sampling["source"] == {"temperature": "default", "top_p": "default", "max_new_tokens": "argument"}
    assert sampling["generation_config"]["max_new_tokens"] == 64  # recorded, overridden by the argument
    assert manifest.provenance["seed"] == 7
    report = read_meta(reference, REPORT)
    assert (report["rows_read"], report["rows_written"], report["rows_dropped"]) == (6, 6, 0)
    assert sum(report["finish_reasons"].values()) == report["samples"] == 6 * N


def test_same_samples_alone_or_in_a_batch_and_on_rerun(reference, model, examples, tmp_path):
    """Batch 1 (no padding) and batch 64 (all 18 sequences, left-padded together) draw the same tokens."""
    alone = tmp_path / "alone"
    generate(examples, model=model, out=alone, n=N, max_new_tokens=MAX_NEW, seed=7, batch_size=1, rows_per_unit=2)
    assert read_table(alone).equals(read_table(reference))
    other_seed = tmp_path / "seed8"
    generate(examples, model=model, out=other_seed, n=N, max_new_tokens=MAX_NEW, seed=8, batch_size=5)
    assert read_table(other_seed).column("samples") != read_table(reference).column("samples")


def test_left_padding_does_not_change_a_rows_logits(model):
    """The reason batching cannot flip a draw: padded and unpadded logits agree to float rounding."""
    info = load_model_info(model)
    engine = HFEngine(info, batch_size=4, device="cpu")
    short, long = (
        info.render([{"role": "user", "content": "Hi."}]),
        info.render([{"role": "user", "content": "The cat likes a red apple. What does the cat like?"}]),
    )
    width = len(long)
    ids = torch.tensor([[0] * (width - len(short)) + short, long])
    mask = (torch.arange(width) >= width - len(short)).long()[None].repeat(2, 1)
    mask[1] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    from transformers import DynamicCache

    batched = engine._forward(ids, mask, positions, DynamicCache(config=engine.model.config))
    single = engine._forward(
        torch.tensor([short]),
        torch.ones(1, len(short), dtype=torch.long),
        torch.arange(len(short))[None],
        DynamicCache(config=engine.model.config),
    )
    assert torch.allclose(batched[0], single[0], atol=1e-5, rtol=0)


def test_resume_after_a_crash_equals_an_uninterrupted_run(reference, model, examples, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write, calls = generate_module.StageRun.write, []

    def crash_after_first_unit(self, unit, table):
        if calls:
            raise RuntimeError("simulated crash")
        calls.append(unit.seq)
        real_write(self, unit, table)

    monkeypatch.setattr(generate_module.StageRun, "write", crash_after_first_unit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(examples, model=model, out=out, n=N, max_new_tokens=MAX_NEW, seed=7, batch_size=4, rows_per_unit=2)
    monkeypatch.setattr(generate_module.StageRun, "write", real_write)
    assert find_meta(out, MANIFEST) is None
    resumed = generate(
        examples, model=model, out=out, n=N, max_new_tokens=MAX_NEW, seed=7, batch_size=4, rows_per_unit=2
    )
    assert (resumed.units_written, resumed.units_skipped) == (2, 1)
    assert read_table(out, check_hashes=True).equals(read_table(reference))
    again = generate(examples, model=model, out=out, n=N, max_new_tokens=MAX_NEW, seed=7, batch_size=4, rows_per_unit=2)
    assert (again.units_written, again.tokens_generated) == (0, 0)


def test_two_shards_merged_equal_one_run(reference, model, examples, tmp_path):
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"s{i}")
        generate(
            examples,
            model=model,
            out=parts[-1],
            n=N,
            max_new_tokens=MAX_NEW,
            seed=7,
            batch_size=3,
            rows_per_unit=2,
            shard=f"{i}/2",
        )
    assert 0 < read_table(parts[0]).num_rows < 6
    merge(parts, tmp_path / "merged")
    assert read_table(tmp_path / "merged").equals(read_table(reference))
    report = read_meta(tmp_path / "merged", REPORT)
    assert (report["rows_written"], report["samples"]) == (6, 6 * N)
    # the merged folder has the unsharded identity: rerunning without --shard finds it complete
    again = generate(
        examples, model=model, out=tmp_path / "merged", n=N, max_new_tokens=MAX_NEW, seed=7, rows_per_unit=2
    )
    assert again.units_written == 0


def test_stop_at_any_eos_id_from_generation_config(model, examples, tmp_path):
    """Half the vocabulary declared eos in generation_config.json: most samples stop early."""
    stoppy = tmp_path / "stoppy"
    shutil.copytree(model, stoppy)
    gen_path = stoppy / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen["eos_token_id"] = [2, *range(7, 512, 2)]
    gen["top_k"] = 20  # not applied by the sampler: must be reported as ignored
    gen_path.write_text(json.dumps(gen))
    out = tmp_path / "out"
    generate(examples, model=stoppy, out=out, n=N, max_new_tokens=MAX_NEW, seed=7, batch_size=8)
    samples = [s for row in read_table(out).to_pylist() for s in row["samples"]]
    stopped = [s for s in samples if s["finish_reason"] == "stop"]
    assert len(stopped) >= len(samples) - 1  # P(12 draws avoid half the vocab) is tiny
    assert all(s["num_tokens"] < MAX_NEW for s in stopped)
    manifest = load_manifest(out)
    assert manifest.identity.config["eos_token_ids"][:2] == [2, 7]
    assert manifest.provenance["model"]["sampling"]["ignored_generation_config"] == {"top_k": 20}
    assert read_meta(out, REPORT)["finish_reasons"]["stop"] == len(stopped)


def test_engine_token_ids_do_not_depend_on_the_batch(model):
    """The same requests decoded one by one and all together (left-padded, rows leaving as they stop)."""
    info = load_model_info(model)
    requests = [
        Request(tuple(info.render([{"role": "user", "content": p}])), sample_seed(1, str(p), i))
        for p in PROMPTS
        if isinstance(p, str)
        for i in range(2)
    ]
    assert len({len(r.prompt_tokens) for r in requests}) == 5
    params = SamplingParams(temperature=1.3, top_p=0.95, max_new_tokens=MAX_NEW, eos_token_ids=(2, *range(7, 60)))
    alone = HFEngine(info, batch_size=1, device="cpu").generate(requests, params, on_done=lambda _: None)
    together = HFEngine(info, batch_size=len(requests), device="cpu").generate(requests, params, on_done=lambda _: None)
    assert together == alone
    assert {c.finish_reason for c in alone} == {"stop", "length"}


def test_a_stopped_sample_is_the_prefix_before_the_first_eos(model):
    """Same seed, same logits: with more eos ids a row stops where the first of them was drawn,
    and its tokens are the other run's tokens up to there, the eos excluded."""
    info = load_model_info(model)
    engine = HFEngine(info, batch_size=4, device="cpu")
    requests = [
        Request(tuple(info.render([{"role": "user", "content": p}])), sample_seed(0, p, 0))
        for p in ("Hi.", "What is 2 plus 3?", "Repeat the word river.")
    ]
    long_params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, eos_token_ids=(2,))
    full = engine.generate(requests, long_params, on_done=lambda _: None)
    assert all(c.finish_reason == "length" and len(c.token_ids) == MAX_NEW for c in full)
    eos = {full[0].token_ids[3], full[1].token_ids[0], full[2].token_ids[5]}
    stop_params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, eos_token_ids=tuple(eos))
    for long, short in zip(full, engine.generate(requests, stop_params, on_done=lambda _: None), strict=True):
        first = next(i for i, t in enumerate(long.token_ids) if t in eos)
        assert short.finish_reason == "stop"
        assert short.token_ids == long.token_ids[:first]


def test_greedy_matches_transformers_generate(model, examples, tmp_path):
    """temperature=0 is greedy: every sample is transformers' own greedy continuation."""
    out = tmp_path / "greedy"
    generate(examples, model=model, out=out, n=2, temperature=0, max_new_tokens=MAX_NEW, batch_size=7)
    info = load_model_info(model)
    hf = AutoModelForCausalLM.from_pretrained(model)
    for row in read_table(out).to_pylist()[:3]:
        ids = torch.tensor([info.render(row["prompt"])])
        with torch.inference_mode():
            full = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW)
        new = full[0, ids.shape[1] :].tolist()
        if new[-1] == 2:
            new = new[:-1]
        assert [s["text"] for s in row["samples"]] == [info.decode(new)] * 2
        assert row["samples"][0]["num_tokens"] == len(new)


def test_too_long_prompts_are_dropped_and_reported(model, tmp_path):
    src = _write_jsonl(tmp_path / "p.jsonl", ["Hi.", "apple river stone " * 200])
    ingest(src, format="prompts", out=tmp_path / "ex")
    out = tmp_path / "out"
    summary = generate(tmp_path / "ex", model=model, out=out, n=2, max_new_tokens=4)
    assert (summary.rows_written, summary.rows_dropped) == (1, 1)
    report = read_meta(out, REPORT)
    assert report["dropped_rows"] == {"prompt_too_long": 1} and len(report["examples"]) == 1
    assert read_table(out).num_rows == 1


def test_bad_inputs_and_arguments(model, examples, tmp_path):
    # an examples table with no rows (ingest refuses to write one; another producer might)
    empty = StageRun(tmp_path / "ex_empty", stage="ingest", schema="examples", config={}, inputs={}, rows_per_unit=1)
    empty.pending([])
    empty.finish()
    with pytest.raises(PipelineInputError, match="no rows"):
        generate(tmp_path / "ex_empty", model=model, out=tmp_path / "o1", n=2)
    role = tmp_path / "role.jsonl"
    role.write_text(json.dumps({"prompt": [{"role": "tool", "content": "x"}]}) + "\n")
    ingest(role, format="prompts", out=tmp_path / "ex_role")
    with pytest.raises(PipelineInputError, match=r"row 0 \(0-based\), column 'prompt'.*unknown role"):
        generate(tmp_path / "ex_role", model=model, out=tmp_path / "o2", n=2)
    with pytest.raises(PipelineInputError, match="no manifest.json"):
        generate(tmp_path, model=model, out=tmp_path / "o3", n=2)
    for kwargs in ({"temperature": -1.0}, {"top_p": 0.0}, {"n": 0}, {"engine": "nope"}):
        with pytest.raises(PipelineConfigError):
            generate(examples, model=model, out=tmp_path / "o4", **{"n": 2, "max_new_tokens": 2, **kwargs})
