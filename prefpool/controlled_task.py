"""A controlled preference task with a known reward, made entirely here.

In the spirit of the DPO paper's controlled sentiment experiment (Rafailov et
al. 2023, Sec. 6.1), but small enough for a CPU: a synthetic language of short
descriptions ("the river was warm and very dark ."), a hidden reward that
counts positive minus negative adjectives, and a tiny reference model trained
briefly on the language, whose samples carry every reward from clearly
negative to clearly positive. Preference labels come from the reward through a
Bradley-Terry draw, so they are noisy, as human labels are.

Because the reward is known, a trained policy can be judged by what matters:
the true reward of fresh samples, and how far it moved from the reference
(KL on fresh samples).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

POSITIVE = ("good", "great", "happy", "bright", "kind", "calm", "warm", "lovely", "gentle", "sweet")
NEGATIVE = ("bad", "sad", "dark", "cold", "cruel", "dull", "ugly", "angry", "grim", "harsh")
TOPICS = ("cat", "dog", "house", "tree", "river", "day", "night", "city", "road", "garden",
          "sea", "hill", "song", "room", "storm", "winter")
INTENSIFIERS = ("very", "quite", "so")
VERBS = ("was", "is", "seemed", "felt")
_SENTIMENT = {w: 1 for w in POSITIVE} | {w: -1 for w in NEGATIVE}


def prompt_for(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Describe the {topic}."}]


def make_prompts(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` prompts, cycling through the topics in a seeded order."""
    rng = random.Random(seed)
    topics = list(TOPICS)
    out = []
    while len(out) < n:
        rng.shuffle(topics)
        out.extend(prompt_for(t) for t in topics)
    return out[:n]


def sample_description(topic: str, rng: random.Random) -> str:
    """One sentence of the language: 1-3 clauses of adjectives, sentiment 50/50 positive/negative."""
    clauses = []
    for i in range(rng.randint(1, 3)):
        words = [] if i == 0 else ["and"]
        if i == 0:
            words += ["the", topic, rng.choice(VERBS)]
        if rng.random() < 0.3:
            words.append(rng.choice(INTENSIFIERS))
        words.append(rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE))
        clauses.append(" ".join(words))
    return " ".join(clauses) + " ."


def true_reward(text: str) -> float:
    """The hidden reward: positive adjectives minus negative ones."""
    return float(sum(_SENTIMENT.get(word, 0) for word in text.lower().split()))


def bradley_terry_prefers_first(reward_a: float, reward_b: float, rng: random.Random,
                                temperature: float = 1.0) -> bool:
    """Draw a noisy label: ``a`` wins with probability ``σ((r_a - r_b) / temperature)``."""
    p = 1.0 / (1.0 + math.exp(-(reward_a - reward_b) / temperature))
    return rng.random() < p


def corpus(n: int, seed: int = 0) -> list[tuple[list[dict[str, str]], str]]:
    """``n`` (prompt, description) pairs of the language, for training the reference."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        pairs.append((prompt_for(topic), sample_description(topic, rng)))
    return pairs


def train_reference_model(out_dir: str | Path, *, steps: int = 300, batch_size: int = 32,
                          lr: float = 3e-3, seed: int = 0) -> Path:
    """Build a tiny Llama, fit it to the language by maximum likelihood, save it.

    The model only needs the grammar and the 50/50 adjective mix: its samples
    are then spread over rewards, which is what preference learning needs.
    Deterministic for a seed on a given machine.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefpool.pipeline.tokenize import encode_pair
    from prefpool.tiny_model import build_tiny_llama
    from prefpool.train.scoring import completion_logps

    data = corpus(4000, seed=seed)
    texts = [f"{p[0]['content']} {d}" for p, d in data]
    out = build_tiny_llama(out_dir, texts=texts, vocab_size=320, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    pairs = []
    for prompt, description in data:
        encoded = encode_pair(tokenizer, prompt, description, max_length=128)
        pairs.append((encoded.prompt_ids, encoded.completion_ids))

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        picked = torch.randint(len(pairs), (batch_size,), generator=order_rng).tolist()
        logps, counts = completion_logps(model, [pairs[i] for i in picked], tokenizer.pad_token_id)
        loss = -logps.sum() / counts.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    return out
