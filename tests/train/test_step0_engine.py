"""A reference cache made by another engine than the trainer's: the cache says so, and step 0 names it.

On real data the vllm engine's log-probs differ from the hf engine's (the
trainer's numerics) by up to ~1e-2 nats (``benchmarks/bench_engine_agreement.py``).
Here an engine registered as ``vllm`` returns the hf engine's values shifted by
a few 1e-3 nats, as vLLM's are on SmolLM2 with real prompts, so the test runs
without vllm; the logprobs stage, build and the trainer are the real ones.
"""

from __future__ import annotations

import pytest
import torch
from trainer_tables import MAX_LENGTH

from prefpool.pipeline.build import build
from prefpool.pipeline.engines.logprob_engines import HFEngine, Scores
from prefpool.pipeline.engines.registry import ENGINES
from prefpool.pipeline.engines.vllm_engine import VLLM
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.logprobs import logprobs
from prefpool.train.cache_check import Step0MismatchError, check_step0
from prefpool.train.config import TrainConfig
from prefpool.train.trainer import Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
SHIFT = 0.004  # nats per sequence


class ShiftedScorer(HFEngine):
    """The hf engine's values, each sequence ``SHIFT`` nats lower: another engine's rounding."""

    def score(self, sequences, starts, *, per_token):
        scores = super().score(sequences, starts, per_token=per_token)
        return Scores([v - SHIFT for v in scores.logps], scores.counts, scores.token_logps)


class ShiftedVLLM(VLLM):
    """The vllm engine (its name, options and device handling) with the shifted hf scorer."""

    def scorer(self, source, *, options, **kwargs):
        return ShiftedScorer(source, **kwargs)


def test_a_vllm_cache_records_its_engine_and_step0_names_it(world, tmp_path, monkeypatch):
    monkeypatch.setitem(ENGINES, "vllm", ShiftedVLLM())
    examples = world["root"] / "data" / "examples"
    lp = logprobs(examples, model=world["model"], out=tmp_path / "lp", engine="vllm", max_length=MAX_LENGTH).out
    cache = load_manifest(lp).identity.config["cache"]
    assert cache["engine"] == "vllm"
    hf_cache = load_manifest(world["root"] / "data" / "lp-examples").identity.config["cache"]
    assert {**cache, "engine": "hf"} == hf_cache  # the same model and settings: only the engine differs
    table = build("pairwise", examples=examples, logprobs=lp, out=tmp_path / "pairwise").out
    cfg = TrainConfig(
        model=str(world["model"]),
        data=str(table),
        output_dir=str(tmp_path / "run"),
        loss="dpo",
        max_length=MAX_LENGTH,
        batch_size=4,
        max_steps=1,
        progress=False,
    )
    with pytest.raises(Step0MismatchError) as caught:
        Trainer(cfg)
    message = str(caught.value)
    assert "made by the vllm engine" in message and "prefpool logprobs --engine hf" in message
    assert "step0_tolerance: 0.005" in message and "another model" not in message
    assert not (tmp_path / "run").exists()


def test_step0_message_of_an_hf_cache_still_blames_the_model():
    with pytest.raises(Step0MismatchError, match="another model, tokenizer, chat template or max_length"):
        check_step0(0.5, 1e-3, data="t", model="m", engine="hf")
    check_step0(0.004, 0.005, data="t", model="m", engine="vllm")  # within the tolerance: accepted
