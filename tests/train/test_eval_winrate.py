"""eval's win-rate by a reward model, and the length-controlled win-rate, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from test_eval_support import pairwise_row, write_table
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.core.errors import ConfigError
from prefpool.testing import build_tiny_llama
from prefpool.train.eval_winrate import length_controlled_win_rate, outcomes, win_rate_figures
from prefpool.train.evaluate import evaluate

torch.set_num_threads(1)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_length_controlled_win_rate_of_a_saturated_fit():
    """Two length differences, d = 10 (4 comparisons, 3 wins) and d = 30 (8, 7 wins). With two distinct x the
    logistic fit is exact: sigmoid(b0 + b1 x_k) = r_k, so b1 = (logit r1 - logit r2) / (x1 - x2) and
    b0 = logit r1 - b1 x1. x = tanh(d / sd(d)), sd(d) = sqrt(mean d^2 - mean(d)^2) = 9.428."""
    diffs = [10.0] * 4 + [30.0] * 8
    wins = [1.0, 1.0, 1.0, 0.0] + [1.0] * 7 + [0.0]
    sd = math.sqrt(sum(d * d for d in diffs) / 12 - (sum(diffs) / 12) ** 2)
    x1, x2 = math.tanh(10 / sd), math.tanh(30 / sd)
    b1 = (_logit(0.75) - _logit(7 / 8)) / (x1 - x2)
    b0 = _logit(0.75) - b1 * x1
    expected = 1 / (1 + math.exp(-b0))
    assert expected == pytest.approx(0.112, abs=1e-3)  # raw win-rate 10/12 = 0.833: most of it is length
    # the ridge on b1 (1e-6) moves the fit by about 2e-5
    assert length_controlled_win_rate(wins, diffs) == pytest.approx(expected, abs=1e-4)


def test_equal_lengths_give_the_plain_win_rate():
    wins = outcomes([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0])
    assert wins == [1.0, 0.0, 0.5, 1.0]
    assert length_controlled_win_rate(wins, [0.0] * 4) == pytest.approx(0.625, abs=1e-9)
    figures = win_rate_figures([3.0, 1.0], [1.0, 2.0], ["abcd", "ab"], ["a", "abc"])
    assert (
        figures["win_rate"] == 0.5 and figures["mean_length_chars"] == 3.0 and figures["ref_mean_length_chars"] == 2.0
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    policy = build_tiny_llama(tmp_path_factory.mktemp("eval") / "policy", seed=1)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    config = LlamaConfig.from_pretrained(policy, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rm = LlamaForSequenceClassification(config)
    rm_dir = tmp_path_factory.mktemp("rm") / "rm"
    rm.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    return policy, rm_dir


def test_eval_win_rate_by_a_reward_model(models, tmp_path):
    """The policy against itself: the same seeded samples, so every comparison ties (win-rate and its
    length-controlled figure 1/2); the mean reward is the reward model's score of those samples."""
    from prefpool.pipeline.engines.reward_model import load_reward_model
    from prefpool.train.data import prompts_of
    from prefpool.train.eval_samples import sample_texts

    policy, rm = models
    model = AutoModelForCausalLM.from_pretrained(policy).float().eval()
    tok = AutoTokenizer.from_pretrained(policy)
    data = write_table(
        tmp_path / "pw",
        "pairwise",
        [pairwise_row(model, tok, f"q{i}", "the cat", "a dog") for i in range(2)],
        tokenizer=tok,
    )
    s = evaluate(policy, data, reward_model=rm, ref_model=policy, num_samples=2, max_new_tokens=4, seed=7)["samples"]
    assert s["win_rate"] == 0.5 and s["length_controlled_win_rate"] == pytest.approx(0.5, abs=1e-9)
    assert s["mean_length_chars"] == s["ref_mean_length_chars"]
    prompts = list(prompts_of(data, None))
    texts, _ = sample_texts(policy, prompts, num_samples=2, seed=7, max_new_tokens=4, temperature=None, top_p=None)
    scorer = load_reward_model(rm, batch_size=4)
    direct = [
        v for (_, messages), row in zip(prompts, texts, strict=True) for v in scorer.score([(messages, t) for t in row])
    ]
    assert s["mean_reward"] == pytest.approx(sum(direct) / len(direct), abs=1e-5)
    with pytest.raises(ConfigError, match="not several"):
        evaluate(policy, data, reward_model=rm, reward_fn="test_score:count_good")
