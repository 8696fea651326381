"""The "plug the losses into any trainer" examples run, learn, and hold one model only."""

from __future__ import annotations

import gc
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from prefpool.pipeline.model.tokenize import encode_pair
from prefpool.testing import build_tiny_llama, default_corpus, train_tokenizer

torch.set_num_threads(1)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STEPS = 60


@pytest.fixture(scope="module", autouse=True)
def _examples_on_path():
    # The examples are scripts, not a package: import them from their folder.
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def _import(name: str):
    return importlib.import_module(name)


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize("name", ["mcpo_plain_pytorch", "mcpo_hf_trainer"])
def test_example_learns_with_one_model(name, monkeypatch, tmp_path):
    """Loss starts at ln 2 (policy == cached reference), the policy learns; one model is alive while training.

    At step 0 the policy is the model whose log-probs were cached, so every
    reward is 0 and -log σ(0) = ln 2 = 0.6931 to float32 precision: this also
    checks that the caching and the training path compute log-probs the same way.
    The paper's sample kernel also draws the preferred answer itself (loss log 2,
    no gradient), more often as it wins, so the sampled loss stays near log 2;
    learning shows in the pool accuracy (preferred answer above every candidate).
    """
    example = _import(name)
    seen = []
    real_loss = example.mcpo_batch_loss

    def checked_loss(model, batch, **kwargs):
        if not seen:
            gc.collect()
            live = [o for o in gc.get_objects() if type(o) is LlamaForCausalLM]
            seen.append(len(live))
            assert live == [model], f"{len(live)} models alive during training, expected 1"
        return real_loss(model, batch, **kwargs)

    monkeypatch.setattr(example, "mcpo_batch_loss", checked_loss)
    history = example.main(steps=STEPS, out_dir=tmp_path, seed=0)
    losses = [h["loss"] for h in history]
    pool_acc = [h["pool_accuracy"] for h in history]

    assert seen == [1]
    assert len(losses) == STEPS
    assert all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert pool_acc[0] == 0.0  # every reward 0: ties, not wins
    first, last = _mean(pool_acc[:3]), _mean(pool_acc[-5:])
    assert last > first + 0.5, f"did not learn: pool accuracy first 3 {first:.2f}, last 5 {last:.2f}"
    assert (tmp_path / "tiny-llama" / "config.json").exists()


def test_toy_task_batch_layout(tmp_path):
    """Collated rows are B chosen then B*M candidates, each the example's prompt and that answer."""
    toy = _import("toy_task")
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_llama(tmp_path, num_layers=1))
    examples = toy.make_examples(seed=0)
    assert all(ex.chosen not in ex.candidates and len(ex.candidates) == 4 for ex in examples)
    features = [toy.encode_example(tokenizer, ex) for ex in examples[:3]]
    for f in features:
        f["ref_chosen_logps"] = -1.0
        f["ref_candidate_logps"] = [-2.0, -3.0, -4.0, -5.0]
    batch = toy.collate(features, tokenizer.pad_token_id)

    assert len(batch["pairs"]) == 3 * (1 + 4) and batch["num_candidates"] == 4
    assert batch["ref_chosen_logps"].shape == (3,) and batch["ref_candidate_logps"].shape == (3, 4)
    completions = [f["chosen_ids"] for f in features] + [c for f in features for c in f["candidate_ids"]]
    prompts = [f["prompt_ids"] for f in features] + [f["prompt_ids"] for f in features for _ in range(4)]
    for (prompt, completion), want_prompt, want in zip(batch["pairs"], prompts, completions, strict=True):
        assert (prompt, completion) == (want_prompt, want) and completion[-1] == tokenizer.eos_token_id

    features[1] = {**features[1], "candidate_ids": features[1]["candidate_ids"][:2]}
    with pytest.raises(ValueError, match="^features"):
        toy.collate(features, tokenizer.pad_token_id)


def test_toy_task_uses_the_same_split():
    """The toy task tokenizes with the pipeline's own prompt/completion split."""
    toy = _import("toy_task")
    tok = train_tokenizer(default_corpus())
    example = toy.make_examples()[0]
    features = toy.encode_example(tok, example)
    pair = encode_pair(tok, example.prompt, example.candidates[1], max_length=None)
    assert features["prompt_ids"] == pair.prompt_ids
    assert features["candidate_ids"][1] == pair.completion_ids
