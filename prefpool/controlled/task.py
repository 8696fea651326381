"""A controlled preference task with a known reward, made entirely here.

In the spirit of the DPO paper's controlled sentiment experiment (Rafailov et
al. 2023, Sec. 6.1), but small enough for a CPU: a synthetic language of short
descriptions ("the river was warm and very dark ."), a hidden reward that
counts positive minus negative adjectives, and a tiny reference model trained
briefly on the language, whose samples carry every reward from clearly
negative to clearly positive. Preference labels come from the reward through a
Bradley-Terry draw, so they are noisy, as human labels are: ``annotator`` is
that draw as a ``score``-stage reward function (true reward + Gumbel noise).

Prompts are "Describe the <topic>." in three phrasings; the last ``HELD_OUT``
topics never appear in the preference data, and a policy is measured on them.
Because the reward is known, a trained policy can be judged by what matters:
the true reward of fresh samples, and how far it moved from the reference
(KL on fresh samples; ``probe.Probe``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import torch

POSITIVE = ("good", "great", "happy", "bright", "kind", "calm", "warm", "lovely", "gentle", "sweet")
NEGATIVE = ("bad", "sad", "dark", "cold", "cruel", "dull", "ugly", "angry", "grim", "harsh")
TOPICS = (
    "cat",
    "dog",
    "house",
    "tree",
    "river",
    "day",
    "night",
    "city",
    "road",
    "garden",
    "sea",
    "hill",
    "song",
    "room",
    "storm",
    "winter",
    "bird",
    "lake",
    "town",
    "forest",
    "field",
    "boat",
    "star",
    "morning",
    "horse",
    "bridge",
    "flower",
    "school",
    "market",
    "cloud",
    "island",
    "village",
)
# The last HELD_OUT topics never appear in the preference data: a policy is measured on them.
HELD_OUT = 8
TEMPLATES = ("Describe the {}.", "Tell me about the {}.", "Write about the {}.")
INTENSIFIERS = ("very", "quite", "so")
VERBS = ("was", "is", "seemed", "felt")
_SENTIMENT = {w: 1 for w in POSITIVE} | {w: -1 for w in NEGATIVE}


def prompt_for(topic: str, template: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": TEMPLATES[template].format(topic)}]


def train_topics() -> tuple[str, ...]:
    return TOPICS[:-HELD_OUT]


def held_out_topics() -> tuple[str, ...]:
    return TOPICS[-HELD_OUT:]


def task_prompts(topics: tuple[str, ...]) -> list[list[dict[str, str]]]:
    """Every template for every topic, in a fixed order."""
    return [prompt_for(topic, t) for topic in topics for t in range(len(TEMPLATES))]


def make_prompts(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` prompts (first template), cycling through the topics in a seeded order."""
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


# Every word a description can use.
VOCABULARY = frozenset({"the", "and", ".", *TOPICS, *VERBS, *INTENSIFIERS, *POSITIVE, *NEGATIVE})


def in_language(text: str) -> bool:
    """A non-empty text made only of the language's words (grammar not checked)."""
    words = text.split()
    return bool(words) and set(words) <= VOCABULARY


def true_reward(text: str) -> float:
    """The hidden reward: positive adjectives minus negative ones."""
    return float(sum(_SENTIMENT.get(word, 0) for word in text.lower().split()))


def reward(prompt: list[dict[str, str]], completion: str) -> float:
    """``true_reward`` as a ``score`` stage / ``eval`` reward function: ``f(prompt, completion)``."""
    return true_reward(completion)


def _gumbel(prompt: list[dict[str, str]], completion: str) -> float:
    """A standard Gumbel draw fixed by the (prompt, completion) text: the same answer, the same noise."""
    key = json.dumps([prompt, completion], ensure_ascii=False).encode("utf-8")
    u = (int.from_bytes(hashlib.sha256(key).digest()[:8], "big") + 0.5) / 2**64  # in (0, 1)
    return -math.log(-math.log(u))


def annotator(prompt: list[dict[str, str]], completion: str) -> float:
    """A noisy human stand-in, as a ``score`` reward function: true reward plus standard Gumbel noise.

    Picking the highest of these scores among a prompt's answers picks answer
    ``i`` with probability ``softmax(true rewards)_i`` (the Gumbel-max trick):
    for two answers that is exactly a Bradley-Terry label,
    ``P(a over b) = σ(r_a - r_b)``, and sorting them gives a Plackett-Luce ranking.
    """
    return true_reward(completion) + _gumbel(prompt, completion)


def sharp_annotator(prompt: list[dict[str, str]], completion: str) -> float:
    """Near-deterministic labels: Bradley-Terry at temperature 0.1 (``σ(10 (r_a - r_b))``)."""
    return true_reward(completion) + 0.1 * _gumbel(prompt, completion)


def bradley_terry_prefers_first(reward_a: float, reward_b: float, rng: random.Random, temperature: float = 1.0) -> bool:
    """Draw a noisy label: ``a`` wins with probability ``σ((r_a - r_b) / temperature)``."""
    p = 1.0 / (1.0 + math.exp(-(reward_a - reward_b) / temperature))
    return rng.random() < p


def corpus(n: int, seed: int = 0) -> list[tuple[list[dict[str, str]], str]]:
    """``n`` (prompt, description) pairs of the language, for training the reference."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        pairs.append((prompt_for(topic, rng.randrange(len(TEMPLATES))), sample_description(topic, rng)))
    return pairs


def train_reference_model(
    out_dir: str | Path, *, steps: int = 300, batch_size: int = 32, lr: float = 3e-3, seed: int = 0
) -> Path:
    """Build a tiny Llama, fit it to the language by maximum likelihood, save it.

    The model only needs the grammar and the 50/50 adjective mix: its samples
    are then spread over rewards, which is what preference learning needs.
    Deterministic for a seed on a given machine.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefpool.pipeline.model.scoring import completion_logps
    from prefpool.pipeline.model.tokenize import encode_pair
    from prefpool.testing import build_tiny_llama

    data = corpus(4000, seed=seed)
    texts = [f"{p[0]['content']} {d}" for p, d in data]
    out = build_tiny_llama(out_dir, texts=texts, vocab_size=512, seed=seed)
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
