"""The controlled task: known reward, noisy Bradley-Terry labels, a reference that speaks the language."""

from __future__ import annotations

import math
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.controlled.task import (
    HELD_OUT,
    INTENSIFIERS,
    NEGATIVE,
    POSITIVE,
    TEMPLATES,
    TOPICS,
    VERBS,
    annotator,
    bradley_terry_prefers_first,
    corpus,
    held_out_topics,
    in_language,
    make_prompts,
    sample_description,
    sharp_annotator,
    task_prompts,
    train_reference_model,
    train_topics,
    true_reward,
)

torch.set_num_threads(1)

LANGUAGE = set(POSITIVE) | set(NEGATIVE) | set(TOPICS) | set(INTENSIFIERS) | set(VERBS) | {"the", "and", "."}


def test_reward_counts_positive_minus_negative_adjectives():
    """'good', 'warm' are +1 each, 'dark' is -1: 2 - 1 = 1; unknown words count 0."""
    assert true_reward("the sea was good and warm and very dark .") == 1.0
    assert true_reward("the sea was blue .") == 0.0
    assert true_reward("GOOD Good good") == 3.0


def test_descriptions_are_in_the_language_with_balanced_sentiment():
    rng = random.Random(0)
    texts = [sample_description("cat", rng) for _ in range(4000)]
    assert all(set(t.split()) <= LANGUAGE for t in texts)
    rewards = [true_reward(t) for t in texts]
    mean = sum(rewards) / len(rewards)
    assert abs(mean) < 0.1  # 50/50 adjectives: E[r] = 0; std of the mean here is about 0.02
    assert min(rewards) == -3.0 and max(rewards) == 3.0


def test_bradley_terry_win_rate_matches_sigmoid():
    """r_a - r_b = 1 at temperature 1: P(a wins) = σ(1) = 0.7311; 20000 draws, 5 standard errors."""
    rng = random.Random(1)
    n = 20000
    wins = sum(bradley_terry_prefers_first(2.0, 1.0, rng) for _ in range(n))
    p = 1 / (1 + math.exp(-1))
    assert abs(wins / n - p) < 5 * math.sqrt(p * (1 - p) / n)
    # A large gap at a low temperature is nearly deterministic, and the label can still flip at 0 gap.
    assert sum(bradley_terry_prefers_first(0.0, 3.0, rng, temperature=0.2) for _ in range(1000)) == 0
    assert 400 < sum(bradley_terry_prefers_first(1.0, 1.0, rng) for _ in range(1000)) < 600


def test_prompts_cycle_through_topics_and_are_deterministic():
    prompts = make_prompts(2 * len(TOPICS), seed=3)
    assert prompts == make_prompts(2 * len(TOPICS), seed=3)
    topics = [p[0]["content"].split()[-1].rstrip(".") for p in prompts]
    assert sorted(topics[: len(TOPICS)]) == sorted(TOPICS)
    assert corpus(5, seed=2) == corpus(5, seed=2)


def test_reference_model_speaks_the_language_with_spread_rewards(tmp_path):
    """After brief maximum-likelihood training, samples are sentences of the language whose
    true rewards spread over negative and positive values (what preference learning needs)."""
    path = train_reference_model(tmp_path / "ref", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    texts = []
    for prompt in make_prompts(8, seed=1):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=False)
        out = model.generate(
            ids, do_sample=True, max_new_tokens=24, num_return_sequences=4, pad_token_id=tokenizer.pad_token_id
        )
        texts += [tokenizer.decode(o[ids.shape[1] :], skip_special_tokens=True) for o in out]
    in_language = [t for t in texts if t.split() and set(t.split()) <= LANGUAGE]
    assert len(in_language) >= 0.9 * len(texts), texts
    rewards = [true_reward(t) for t in texts]
    assert min(rewards) < 0 < max(rewards)


def test_annotator_picks_answers_with_softmax_probabilities():
    """Gumbel-max: the highest annotator score among answers with true rewards 0, 1, 2 is answer i
    with probability softmax(0, 1, 2)_i. 6000 prompts (the noise is fixed per prompt and text);
    each frequency within 5 standard errors."""
    texts = ["the cat was .", "the cat was good .", "the cat was good and warm ."]
    assert [true_reward(t) for t in texts] == [0.0, 1.0, 2.0]
    n = 6000
    counts = [0, 0, 0]
    for k in range(n):
        prompt = [{"role": "user", "content": f"Describe the cat. #{k}"}]
        scores = [annotator(prompt, t) for t in texts]
        counts[scores.index(max(scores))] += 1
    z = sum(math.exp(r) for r in (0, 1, 2))
    for count, r in zip(counts, (0, 1, 2), strict=True):
        p = math.exp(r) / z
        assert abs(count / n - p) < 5 * math.sqrt(p * (1 - p) / n), (counts, p)
    # The same (prompt, text) always gets the same score; the sharp annotator follows the true reward.
    prompt = [{"role": "user", "content": "Describe the cat."}]
    assert annotator(prompt, texts[1]) == annotator(prompt, texts[1])
    sharp_wins = 0
    for k in range(2000):
        prompt = [{"role": "user", "content": f"#{k}"}]
        sharp_wins += sharp_annotator(prompt, texts[1]) > sharp_annotator(prompt, texts[0])
    assert sharp_wins >= 1995  # P(flip) = σ(-10) ≈ 4.5e-5 per pair


def test_held_out_topics_never_reach_the_training_prompts():
    train = {p[0]["content"] for p in task_prompts(train_topics())}
    held = task_prompts(held_out_topics())
    assert len(held) == HELD_OUT * len(TEMPLATES) and len(train) == (len(TOPICS) - HELD_OUT) * len(TEMPLATES)
    assert not any(topic in text.split(" ")[-1] for topic in held_out_topics() for text in train)
    assert in_language("the cat was very good .") and not in_language("") and not in_language("hello .")
