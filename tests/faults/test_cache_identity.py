"""The cache key is checked wherever cached reference log-probs are used: train (tests/train), eval
(test_defects, the fault table), the TRL plug-ins and online (here), by the one ``cache_check`` module."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.pipeline.build import build
from prefpool.pipeline.io.layout import MANIFEST, meta_path, read_meta
from prefpool.pipeline.kinds.source import open_table
from prefpool.train.cache_check import CacheMismatchError, Step0MismatchError, cache_parts, check_cache

pytest.importorskip("trl")
from prefpool.train.trl_plugin import MCPOConfig, MCPODPOTrainer, mcpo_dataset  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _trainer(world, data, tmp_path, *, model=None, tokenizer=None, max_length=64):
    args = MCPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=2,
        max_steps=1,
        report_to=[],
        use_cpu=True,
        max_length=max_length,
        save_strategy="no",
        dataloader_num_workers=0,
    )
    policy = AutoModelForCausalLM.from_pretrained(model or world["model"]).float()
    tok = AutoTokenizer.from_pretrained(tokenizer or world["model"])
    return MCPODPOTrainer(policy, args=args, train_dataset=mcpo_dataset(data), processing_class=tok)


@pytest.fixture(scope="module")
def relabelled_mcpo(world, tmp_path_factory):
    """An mcpo table of another model's values whose manifest claims the reference's cache key."""
    root = tmp_path_factory.mktemp("relabelled")
    table = build("mcpo", examples=world["ingest"], logprobs=world["root"] / "lp-seed-1", out=root / "mcpo").out
    manifest = read_meta(table, MANIFEST)
    ours = read_meta(world["mcpo"], MANIFEST)["identity"]["inputs"]["logprobs"][0]
    manifest["identity"]["inputs"]["logprobs"][0]["identity"]["config"]["cache"] = ours["identity"]["config"]["cache"]
    meta_path(table, MANIFEST).write_text(json.dumps(manifest))
    return table


def test_trl_plugin_runs_step0_when_the_policy_is_the_reference(world, tmp_path):
    trainer = _trainer(world, world["mcpo"], tmp_path)
    assert trainer.train_dataset.num_rows == 8
    trainer.train()  # the check runs on the first training batch, under the trainer's own autocast
    assert trainer.step0_max_abs_diff is not None and trainer.step0_max_abs_diff < 1e-4


def test_trl_plugin_step0_catches_another_models_values(world, relabelled_mcpo, tmp_path):
    trainer = _trainer(world, relabelled_mcpo, tmp_path)  # the cache key claims the reference's: accepted
    with pytest.raises(Step0MismatchError, match="step-0 check"):
        trainer.train()


def test_trl_plugin_refuses_another_template_or_max_length(world, tmp_path):
    with pytest.raises(CacheMismatchError, match="tokenizer_sha256"):
        _trainer(world, world["mcpo"], tmp_path, tokenizer=world["model_other_template"])
    with pytest.raises(CacheMismatchError, match=r"max_length \(cache 64, here 32\)"):
        _trainer(world, world["mcpo"], tmp_path, max_length=32)


def test_online_requires_every_rounds_cache_to_be_the_references(world):
    """online's check: the policy of round r > 0 is not the reference, so the weights are compared with
    the frozen reference's hash instead (a cache of another model is refused)."""
    from prefpool.pipeline.model.cache_key import weights_hash

    kwargs = dict(
        model=None,
        tokenizer=AutoTokenizer.from_pretrained(world["model"]),
        max_length=64,
        truncation="completion",
        dtype="float32",
        reference_is_policy_init=None,
    )
    parts = cache_parts(open_table(world["pairwise_relabelled"]))
    assert not check_cache(parts, reference_weights=weights_hash(world["model"]), **kwargs)
    with pytest.raises(CacheMismatchError, match="other weights than the reference's"):
        check_cache(parts, reference_weights=weights_hash(world["root"] / "model-seed-1"), **kwargs)


def test_online_state_holds_no_token_and_a_new_token_is_the_same_run(tmp_path):
    from prefpool.train.online_state import STATE_NAME, OnlineState

    secret = "hf_" + "Q" * 34
    OnlineState(tmp_path, {"engine_args": {"hf_token": secret}, "n": 2}, {"reference": "abc"})
    assert secret not in (tmp_path / STATE_NAME).read_text()
    OnlineState(tmp_path, {"engine_args": {"hf_token": "hf_" + "R" * 34}, "n": 2}, {"reference": "abc"})  # accepted
