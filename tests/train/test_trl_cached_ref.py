"""TRL's own DPO-family losses on a prefpool pairwise table with the cached reference values
(``CachedRefDPOTrainer``), and the checks every plug-in runs: cache key, step 0, precision, TRL version.

The failures of issue 13 reproduced first: TRL's ``DPOTrainer`` loads a second model by default and
ignores the cached values; with ``precompute_ref_log_probs=True`` it fails on the table's columns.
The plug-in inherited TRL's ``bf16=True`` and checked neither the cache key nor step 0.

Tables: a tiny Llama's own log-probs as the reference (``test_eval_support``), recorded with the full
cache key the ``logprobs`` stage writes; ``shifts`` move the cached values by a known number of nats.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("trl")

from test_eval_support import MAX_LENGTH, full_cache, mcpo_row, pairwise_row, write_table  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from prefpool.core.errors import ConfigError  # noqa: E402
from prefpool.testing import build_tiny_llama  # noqa: E402
from prefpool.train import trl_plugin  # noqa: E402
from prefpool.train.cache_check import CacheMismatchError  # noqa: E402
from prefpool.train.trainer import Step0MismatchError  # noqa: E402
from prefpool.train.trl_plugin import (  # noqa: E402
    CachedRefConfig,
    CachedRefDPOTrainer,
    TRLVersionError,
    check_trl_version,
    prefpool_dataset,
)

torch.set_num_threads(1)

PAIRS = [
    ("what does the cat do", "the cat likes the river and the model writes a bird", "a dog sees"),
    ("tell me about a dog", "a dog hears our team", "the robot and the teacher"),
    ("say something", "the child counts", "our team moves"),
]
BETA = 0.1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("trl-cached") / "model", seed=2)
    return path, AutoTokenizer.from_pretrained(path)


def _table(tiny, folder, shifts=(0.0, 0.0), **cache_kw):
    path, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(path).float().eval()
    rows = [pairwise_row(model, tok, q, c, r, shifts) for q, c, r in PAIRS]
    return write_table(folder, "pairwise", rows, cache=full_cache(path, tok, **cache_kw))


def _kw(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=3,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=MAX_LENGTH,
        learning_rate=1e-3,
        beta=BETA,
        seed=0,
    )
    return {**base, **kw}


def _trainer(tiny, data, tmp_path, config=CachedRefConfig, model=None, **kw):
    path, tok = tiny
    return CachedRefDPOTrainer(
        model if model is not None else AutoModelForCausalLM.from_pretrained(path),
        args=config(**_kw(tmp_path, **kw)),
        train_dataset=prefpool_dataset(data),
        processing_class=tok,
    )


def _first_log(trainer) -> dict:
    trainer.train()
    return next(h for h in trainer.state.log_history if "loss" in h)


# -- the failures reproduced -------------------------------------------------------------------------


def test_plain_dpo_trainer_loads_a_reference_model_or_fails_on_the_cached_columns(tiny, tmp_path):
    """Why the subclass exists: TRL 1.16 never reads the table's ref_*_logps."""
    path, tok = tiny
    data = prefpool_dataset(_table(tiny, tmp_path / "pw"))
    plain = DPOTrainer(
        AutoModelForCausalLM.from_pretrained(path),
        args=DPOConfig(**_kw(tmp_path, bf16=False)),
        train_dataset=data,
        processing_class=tok,
    )
    assert plain.ref_model is not None  # a second model, whose values replace the cached ones
    with pytest.raises(ValueError, match="columns .*ref_chosen_logps.* are duplicated"):
        DPOTrainer(
            AutoModelForCausalLM.from_pretrained(path),
            args=DPOConfig(**_kw(tmp_path, bf16=False, precompute_ref_log_probs=True)),
            train_dataset=data,
            processing_class=tok,
        )


# -- TRL's losses on the cached values -----------------------------------------------------------------


def test_step1_loss_is_log2_when_the_policy_is_the_reference(tiny, tmp_path):
    """Cache = the policy's own log-probs: every log-ratio 0, TRL's sigmoid loss ln 2 = 0.6931, rewards 0;
    no reference model is held, and the step-0 check passes (float32: ~1e-6 nats)."""
    trainer = _trainer(tiny, _table(tiny, tmp_path / "pw"), tmp_path)
    assert trainer.ref_model is None
    log = _first_log(trainer)
    assert log["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert log["rewards/chosen"] == pytest.approx(0.0, abs=1e-5) and log["rewards/margins"] == pytest.approx(
        0, abs=1e-5
    )
    assert trainer.step0_max_abs_diff < 1e-4 and log["step0_max_abs_diff"] < 1e-4


def test_shifting_the_cached_values_moves_the_rewards(tiny, tmp_path):
    """ref_chosen + 1 nat: the chosen log-ratio is -1, so rewards/chosen = -beta = -0.1, the margin -0.1 and
    the loss -log sigmoid(-0.1) = log(1 + e^0.1) = 0.7444: TRL's loss reads the cached values."""
    trainer = _trainer(tiny, _table(tiny, tmp_path / "pw", shifts=(1.0, 0.0)), tmp_path, step0_tolerance=1.5)
    log = _first_log(trainer)
    assert trainer.step0_max_abs_diff == pytest.approx(1.0, abs=1e-4)  # the check measures the shift
    assert log["rewards/chosen"] == pytest.approx(-BETA, abs=1e-5)
    assert log["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert log["rewards/margins"] == pytest.approx(-BETA, abs=1e-5)
    assert log["loss"] == pytest.approx(math.log1p(math.exp(BETA)), abs=1e-5)


def test_trl_ipo_loss_on_the_cached_values(tiny, tmp_path):
    """loss_type ipo with policy = reference: (0 - 1/(2 beta))^2 = 25 for beta 0.1 (Azar et al. eq. 17)."""
    trainer = _trainer(tiny, _table(tiny, tmp_path / "pw"), tmp_path, loss_type=["ipo"])
    assert _first_log(trainer)["loss"] == pytest.approx(1 / (2 * BETA) ** 2, rel=1e-5)


# -- the checks ------------------------------------------------------------------------------------------


def test_trls_bf16_default_is_refused_at_step0(tiny, tmp_path):
    """DPOConfig's bf16=True autocasts the policy; against a float32 cache the step-0 check refuses it."""
    trainer = _trainer(tiny, _table(tiny, tmp_path / "pw"), tmp_path, config=DPOConfig)
    assert trainer.args.bf16 and trainer.args.precompute_ref_log_probs  # TRL's default; switched on by us
    with pytest.raises(Step0MismatchError, match="bf16=True is DPOConfig's default"):
        trainer.train()
    assert CachedRefConfig(**_kw(tmp_path)).bf16 is False


def test_a_cache_the_policy_does_not_reproduce_is_refused_at_step0(tiny, tmp_path):
    trainer = _trainer(tiny, _table(tiny, tmp_path / "pw", shifts=(0.0, 0.5)), tmp_path)
    with pytest.raises(Step0MismatchError, match=r"differ from the cached reference values by up to 0\.5"):
        trainer.train()


def test_the_cache_key_is_checked_against_the_trainer(tiny, tmp_path):
    """Before: a table cached at one max_length trained at another gave a wrong loss and no error."""
    path, tok = tiny
    data = _table(tiny, tmp_path / "pw")
    with pytest.raises(CacheMismatchError, match=r"max_length \(cache 48, here 24\)"):
        _trainer(tiny, data, tmp_path, max_length=24)
    bf16_weights = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    with pytest.raises(CacheMismatchError, match=r"dtype \(cache 'float32', here 'bfloat16'\)"):
        _trainer(tiny, data, tmp_path, model=bf16_weights)
    other = build_tiny_llama(tmp_path / "other", seed=5)
    with pytest.raises(CacheMismatchError, match="not the reference weights"):
        _trainer(tiny, data, tmp_path, model=AutoModelForCausalLM.from_pretrained(other))
    templated = AutoTokenizer.from_pretrained(path)
    templated.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    with pytest.raises(CacheMismatchError, match="tokenizer_sha256"):
        CachedRefDPOTrainer(
            AutoModelForCausalLM.from_pretrained(path),
            args=CachedRefConfig(**_kw(tmp_path)),
            train_dataset=prefpool_dataset(data),
            processing_class=templated,
        )


def test_datasets_without_a_prefpool_record_or_of_another_kind_are_refused(tiny, tmp_path):
    path, tok = tiny
    data = prefpool_dataset(_table(tiny, tmp_path / "pw"))
    bare = data.remove_columns(["prompt_id"]).map(lambda e: e)
    bare.info.description = ""
    with pytest.raises(CacheMismatchError, match="not a prefpool table"):
        CachedRefDPOTrainer(
            AutoModelForCausalLM.from_pretrained(path),
            args=CachedRefConfig(**_kw(tmp_path)),
            train_dataset=bare,
            processing_class=tok,
        )
    model = AutoModelForCausalLM.from_pretrained(path).float().eval()
    mcpo = write_table(
        tmp_path / "mcpo", "mcpo", [mcpo_row(model, tok, "q", "the cat", ["a dog"])], cache=full_cache(path, tok)
    )
    with pytest.raises(CacheMismatchError, match="CachedRefDPOTrainer trains on a 'pairwise' table"):
        _trainer(tiny, mcpo, tmp_path)
    with pytest.raises(ConfigError, match="ref_model: not used"):
        CachedRefDPOTrainer(
            AutoModelForCausalLM.from_pretrained(path),
            ref_model=AutoModelForCausalLM.from_pretrained(path),
            args=CachedRefConfig(**_kw(tmp_path)),
            train_dataset=data,
            processing_class=tok,
        )
    with pytest.raises(ConfigError, match="precompute_ref_log_probs: must be True"):
        _trainer(tiny, _table(tiny, tmp_path / "pw2"), tmp_path, precompute_ref_log_probs=False)


def test_a_negative_step0_tolerance_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="step0_tolerance: must be >= 0 nats, got -1"):
        CachedRefConfig(**_kw(tmp_path, step0_tolerance=-1.0))


def test_an_untested_trl_version_is_a_clear_error(tiny, tmp_path, monkeypatch):
    check_trl_version("1.16.0")
    check_trl_version("1.16.7")
    for version in ("1.15.2", "1.17.0", "2.0.0"):
        with pytest.raises(TRLVersionError, match=rf"tested with trl>=1.16,<1.17; trl {version} is installed"):
            check_trl_version(version)
    monkeypatch.setattr(trl_plugin.trl, "__version__", "1.17.0")
    with pytest.raises(TRLVersionError, match=r"pip install 'prefpool\[trl\]'"):
        _trainer(tiny, _table(tiny, tmp_path / "pw"), tmp_path)
