"""`generate --engine vllm` on the tiny model: schema, finish reasons, determinism across runs, shards, resume.

Two vLLM engines start in this module: one for the reference run through the
CLI, one in a child script that reruns the stage (whole, as two shards, and
crashed then resumed) and calls the engine directly. vLLM and the hf engine
draw from different RNG streams, so sampled texts differ between the engines;
only greedy decoding is compared across them.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from vllm_runs import require_vllm, run_cli, run_python

from prefpool.pipeline.engines.generation import Request
from prefpool.pipeline.engines.hf_generation import HFEngine
from prefpool.pipeline.engines.sampling import SamplingParams, sample_seed
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.layout import REPORT, read_meta
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.model.info import load_model_info
from prefpool.testing import build_tiny_llama

require_vllm()
# xdist: every test here on one worker, so the module's engines start once (make test uses --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm_generate")]
torch.set_num_threads(1)

N, MAX_NEW, SEED, TOP_P = 3, 12, 7, 0.95
PROMPTS = [
    "Hi.",
    "What is 2 plus 3?",
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}],
    "The cat likes a red apple. The dog sees the blue sky. What does the cat like?",
    "Repeat the word river.",
    "Give a word that rhymes with stone, then count its letters and say it in capital letters.",
]
DIRECT = ["Hi.", "What is 2 plus 3?", "Repeat the word river."]  # prompts of the engine-level checks
MANY_EOS = (2, *range(7, 60))

# The child: one engine shared by every stage call (the factory is swapped, nothing else).
CHILD = textwrap.dedent(f"""
    import json, sys
    from pathlib import Path

    from prefpool.pipeline import generate as stage
    from prefpool.pipeline.engines.registry import ENGINES
    from prefpool.pipeline.engines.vllm_engine import VLLM
    from prefpool.pipeline.engines.generation import Request
    from prefpool.pipeline.model.info import load_model_info
    from prefpool.pipeline.engines.vllm_generation import VLLMEngine
    from prefpool.pipeline.merge import merge
    from prefpool.pipeline.engines.sampling import SamplingParams, sample_seed

    if __name__ == "__main__":
        model, examples, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
        engine = VLLMEngine(load_model_info(model))
        class Started(VLLM):  # the one engine started above, for every stage call
            def generator(self, info, **_):
                return engine

        ENGINES["vllm"] = Started()
        run = dict(model=model, n={N}, engine="vllm", max_new_tokens={MAX_NEW}, seed={SEED}, top_p={TOP_P},
                   temperature=1.0)
        stage.generate(examples, out=root / "rerun", **run)
        for i in range(2):
            stage.generate(examples, out=root / f"s{{i}}", shard=f"{{i}}/2", **run)
        merge([root / "s0", root / "s1"], root / "merged")

        real_write = stage.StageRun.write
        def crash_after_first_unit(self, unit, table):
            if unit.seq > 0:
                raise RuntimeError("simulated crash")
            real_write(self, unit, table)
        stage.StageRun.write = crash_after_first_unit
        try:
            stage.generate(examples, out=root / "resumed", rows_per_unit=2, **run)
        except RuntimeError:
            pass
        stage.StageRun.write = real_write
        resumed = stage.generate(examples, out=root / "resumed", rows_per_unit=2, **run)

        info = load_model_info(model)
        requests = [Request(tuple(info.render([{{"role": "user", "content": p}}])), sample_seed(0, p, 0))
                    for p in {DIRECT!r}]
        def draw(**kw):
            params = SamplingParams(**{{"temperature": 1.0, "top_p": 1.0, "max_new_tokens": {MAX_NEW},
                                        "eos_token_ids": (2,), **kw}})
            done = engine.generate(requests, params, on_done=lambda _: None)
            return [[list(c.token_ids), c.finish_reason] for c in done]
        direct = {{
            "long": draw(), "again": draw(), "many_eos": draw(eos_token_ids={MANY_EOS!r}),
            "greedy": draw(temperature=0.0), "units": [resumed.units_written, resumed.units_skipped],
        }}
        (root / "direct.json").write_text(json.dumps(direct))
""")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    (root / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    ingest(root / "p.jsonl", format="prompts", out=root / "ex")
    return root / "ex"


@pytest.fixture(scope="module")
def runs(model, examples, tmp_path_factory):
    """The CLI's reference run, then the child's reruns; the folder holding all their outputs."""
    root = tmp_path_factory.mktemp("vllm_generate")
    stdout = run_cli(
        "generate",
        str(examples),
        "-m",
        str(model),
        "-n",
        str(N),
        "--engine",
        "vllm",
        "-o",
        str(root / "ref"),
        "--max-new-tokens",
        str(MAX_NEW),
        "--seed",
        str(SEED),
        "--top-p",
        str(TOP_P),
        "--temperature",
        "1.0",
    )
    assert stdout.startswith("generate: 6 rows in "), stdout
    (root / "child.py").write_text(CHILD)
    run_python(str(root / "child.py"), str(model), str(examples), str(root))
    return root


def _rows(folder):
    return sorted(read_table(folder, schema="candidates").to_pylist(), key=lambda r: r["prompt_id"])


def test_schema_seeds_finish_reasons_and_manifest(runs, examples):
    rows = _rows(runs / "ref")
    inputs = {r["prompt_id"]: r["prompt"] for r in read_table(examples).to_pylist()}
    assert [r["prompt_id"] for r in rows] == sorted(inputs)
    for row in rows:
        assert row["prompt"] == inputs[row["prompt_id"]]
        assert [s["seed"] for s in row["samples"]] == [sample_seed(SEED, row["prompt_id"], i) for i in range(N)]
        for s in row["samples"]:
            assert s["finish_reason"] in ("stop", "length")
            assert s["num_tokens"] == MAX_NEW if s["finish_reason"] == "length" else s["num_tokens"] < MAX_NEW
    # not all equal: the per-request seeds really reach vLLM's sampler
    assert len({s["text"] for row in rows for s in row["samples"]}) > N
    manifest = load_manifest(runs / "ref")
    config = manifest.identity.config
    assert (config["engine"], config["n"], config["seed"], config["top_p"]) == ("vllm", N, SEED, TOP_P)
    assert manifest.provenance["model"]["engine"] == "vllm"
    report = read_meta(runs / "ref", REPORT)
    assert sum(report["finish_reasons"].values()) == report["samples"] == 6 * N


def test_a_second_engine_draws_the_same_samples(runs):
    assert _rows(runs / "rerun") == _rows(runs / "ref")


def test_two_shards_merged_equal_one_run(runs):
    assert 0 < read_table(runs / "s0").num_rows < 6
    assert _rows(runs / "merged") == _rows(runs / "ref")


def test_resume_after_a_crash_equals_one_run(runs):
    direct = json.loads((runs / "direct.json").read_text())
    assert direct["units"] == [2, 1]  # 3 units of 2 prompts: the first survived the crash
    assert _rows(runs / "resumed") == _rows(runs / "ref")


def test_engine_stops_at_any_eos_and_drops_it(runs):
    """Same seeds: with more eos ids each request stops where the first of them was drawn, eos excluded."""
    direct = json.loads((runs / "direct.json").read_text())
    assert direct["again"] == direct["long"]
    eos = set(MANY_EOS)
    for (long, long_reason), (short, reason) in zip(direct["long"], direct["many_eos"], strict=True):
        assert long_reason == "length" or (long_reason == "stop" and len(long) < MAX_NEW)
        assert 2 not in long
        first = next((i for i, t in enumerate(long) if t in eos), None)
        if first is None:
            assert (short, reason) == (long, long_reason)
        else:
            assert (short, reason) == (long[:first], "stop")


def test_greedy_agrees_with_the_hf_engine(runs, model):
    info = load_model_info(model)
    requests = [Request(tuple(info.render([{"role": "user", "content": p}])), 0) for p in DIRECT]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=MAX_NEW, eos_token_ids=(2,))
    hf = HFEngine(info, batch_size=4, device="cpu").generate(requests, params, on_done=lambda _: None)
    direct = json.loads((runs / "direct.json").read_text())
    assert direct["greedy"] == [[list(c.token_ids), c.finish_reason] for c in hf]
