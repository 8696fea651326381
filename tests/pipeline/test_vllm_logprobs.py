"""`logprobs --engine vllm` on the tiny model: the hf engine's values on the same tokens, to 1e-4 in fp32
(on a real model and long sequences they differ more: benchmarks/bench_engine_agreement.py).

One vLLM engine starts here (the CLI, with per-token values); the hf runs and
the references are computed in this process.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_runs import require_vllm, run_cli

from prefpool.losses import sequence_logps
from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.model.tokenize import encode_pair
from prefpool.testing import build_tiny_llama

require_vllm()
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm_logprobs")]
torch.set_num_threads(1)

MAX_LENGTH = 48  # short enough that some completions are cut: truncated pairs are scored alike
ATOL = 1e-4


def _records() -> list[dict]:
    rows = [
        {
            "prompt": f"What is {i} plus {i}?",
            "chosen": f"{2 * i}",
            "rejected": "the cat sees a red apple " * (i % 4 + 1),
        }
        for i in range(5)
    ]
    rows.append(
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}],
            "chosen": "Hello.",
            "rejected": "the old map " * 12,
        }
    )
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    ingest(root / "p.jsonl", format="pairwise", out=root / "ex")
    return root / "ex"


@pytest.fixture(scope="module")
def vllm_out(tiny, examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "lp"
    stdout = run_cli(
        "logprobs",
        str(examples),
        "-m",
        str(tiny),
        "-o",
        str(out),
        "--engine",
        "vllm",
        "--max-length",
        str(MAX_LENGTH),
        "--per-token",
    )
    assert stdout.startswith("logprobs: 12 rows in "), stdout
    return out


@pytest.fixture(scope="module")
def hf_out(tiny, examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "lp"
    logprobs(examples, model=tiny, out=out, engine="hf", max_length=MAX_LENGTH, per_token=True)
    return out


def _by_pair(folder) -> dict[tuple[str, str], dict]:
    return {(r["prompt_id"], r["completion_id"]): r for r in read_table(folder, schema="logprobs").to_pylist()}


@pytest.fixture(scope="module")
def reference(tiny, examples):
    """Per pair: (sum, per-token) from one unpadded forward, by hand and by ``sequence_logps``."""
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    values = {}
    for row in read_table(examples).to_pylist():
        for answer in row["answers"]:
            pair = encode_pair(tokenizer, row["prompt"], answer["text"], max_length=MAX_LENGTH)
            ids = torch.tensor([pair.prompt_ids + pair.completion_ids])  # (1, T)
            with torch.inference_mode():
                logits = model(input_ids=ids).logits.double()  # (1, T, V)
            start = len(pair.prompt_ids)
            # logits[:, t] predicts ids[:, t + 1]
            by_hand = torch.log_softmax(logits[0, start - 1 : -1], dim=-1).gather(-1, ids[0, start:, None])[:, 0]
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[0, start:] = True
            shared, count = sequence_logps(logits[:, :-1].float(), ids[:, 1:], mask[:, 1:])
            assert int(count) == len(pair.completion_ids) and abs(float(shared) - by_hand.sum().item()) < ATOL
            values[(row["prompt_id"], completion_id(answer["text"]))] = (by_hand.sum().item(), by_hand.tolist())
    return values


def test_vllm_equals_hf_and_the_reference_on_the_same_tokens(vllm_out, hf_out, reference):
    vllm, hf = _by_pair(vllm_out), _by_pair(hf_out)
    assert set(vllm) == set(hf) == set(reference) and len(vllm) == 12
    assert any(r["truncated"] for r in vllm.values())
    for key, (total, per_token) in reference.items():
        v, h = vllm[key], hf[key]
        assert (
            (v["num_tokens"], v["truncated"]) == (h["num_tokens"], h["truncated"]) == (len(per_token), v["truncated"])
        )
        assert abs(v["logp"] - total) < ATOL and abs(h["logp"] - total) < ATOL
        assert max(abs(a - b) for a, b in zip(v["token_logps"], per_token, strict=True)) < ATOL
        assert abs(sum(v["token_logps"]) - v["logp"]) < 1e-9


def test_cache_key_names_the_engine_so_rows_are_not_shared(vllm_out, hf_out, tiny, examples, tmp_path):
    """On real models the engines differ by more than rounding (benchmarks/bench_engine_agreement.py), so the
    key names the engine: an hf run recomputes what vLLM cached, and a cache says which engine made it."""
    vllm_keys = {r["cache_key"] for r in _by_pair(vllm_out).values()}
    assert vllm_keys.isdisjoint(r["cache_key"] for r in _by_pair(hf_out).values())
    assert load_manifest(vllm_out).identity.config["cache"]["engine"] == "vllm"
    summary = logprobs(
        examples, model=tiny, out=tmp_path / "reuse", engine="hf", max_length=MAX_LENGTH, per_token=True, cache=vllm_out
    )
    assert (summary.computed, summary.cache_hits) == (12, 0)
