"""A toy preference task for the examples and the quickstart, and the code that scores it.

Task: the user asks the model to repeat a word. The preferred answer repeats
it exactly; every answer in the candidate pool breaks the rule (another word,
the word in capitals, the word reversed, the word twice). A tiny randomly
initialised model learns to rank the preferred answer first in a few dozen steps.

Data flow (the same in both examples):

1. ``make_examples`` -> ``encode_example``: prompt tokens and completion tokens,
   split with the chat template's prefix property.
2. ``cache_reference_logps``: score the chosen answer and the pool ONCE with the
   initial model under ``torch.no_grad`` and keep the numbers in the features.
   No reference model is held after that; the trained model is the only one.
3. ``collate``: the chosen rows and the candidate rows of a batch, as token
   pairs, with the cached reference log-probs.
4. ``mcpo_batch_loss``: one forward pass through prefpool's scoring path
   (``prefpool.pipeline.model.scoring.completion_logps``: padded rows, log-probs
   from the last hidden states), then ``mcpo_loss``.

The reference values and the policy values come out of the same function
(``completion_logps``), so at step 0 policy == reference and the loss is ln 2.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from prefpool.losses import LossOutput, mcpo_loss
from prefpool.pipeline.model import scoring
from prefpool.pipeline.model.tokenize import encode_pair

WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "house",
    "light",
    "music",
    "tiger",
    "paper",
    "water",
    "dream",
    "north",
    "smile",
    "train",
    "bread",
)


@dataclass(frozen=True)
class ToyExample:
    prompt: list[dict[str, str]]  # chat messages, ending with the user's turn
    chosen: str
    candidates: tuple[str, ...]  # M rule-breaking answers


def make_examples(num_candidates: int = 4, seed: int = 0) -> list[ToyExample]:
    """One example per word in ``WORDS``; the pool order is shuffled with ``seed``."""
    rng = random.Random(seed)
    examples = []
    for word in WORDS:
        other = rng.choice([w for w in WORDS if w != word])
        pool = [other, word.upper(), word[::-1], f"{word} {word}"]
        rng.shuffle(pool)
        examples.append(
            ToyExample(
                prompt=[{"role": "user", "content": f"Repeat the word {word}."}],
                chosen=word,
                candidates=tuple(pool[:num_candidates]),
            )
        )
    return examples


def encode_example(tokenizer, example: ToyExample) -> dict:
    """Prompt and completion token ids for the chosen answer and each candidate.

    Uses ``prefpool.pipeline.model.tokenize.encode_pair``, the split the ``logprobs``
    stage uses too: prompt = template(prompt, add_generation_prompt=True);
    completion = the rest of template(prompt + [answer]), ending with end-of-turn.
    """
    pairs = [
        encode_pair(tokenizer, example.prompt, answer, max_length=None)
        for answer in (example.chosen, *example.candidates)
    ]
    return {
        "prompt_ids": pairs[0].prompt_ids,
        "chosen_ids": pairs[0].completion_ids,
        "candidate_ids": [pair.completion_ids for pair in pairs[1:]],
    }


def collate(features: list[dict], pad_token_id: int) -> dict:
    """B chosen rows then B*M candidate rows, as ``(prompt_ids, completion_ids)`` pairs.

    Returns ``pairs`` (``B*(1+M)`` of them), ``pad_token_id``, ``num_candidates`` M,
    and, when the features carry them, the cached ``ref_chosen_logps`` ``(B,)``
    and ``ref_candidate_logps`` ``(B, M)``.
    """
    pool = {len(f["candidate_ids"]) for f in features}
    if len(pool) != 1:
        raise ValueError(
            f"features: pools of different sizes {sorted(pool)}; pad them and pass candidate_mask to mcpo_loss instead"
        )
    rows = [(f["prompt_ids"], f["chosen_ids"]) for f in features]
    rows += [(f["prompt_ids"], c) for f in features for c in f["candidate_ids"]]
    batch = {"pairs": rows, "pad_token_id": pad_token_id, "num_candidates": pool.pop()}
    if "ref_chosen_logps" in features[0]:
        batch["ref_chosen_logps"] = torch.tensor([f["ref_chosen_logps"] for f in features])
        batch["ref_candidate_logps"] = torch.tensor([f["ref_candidate_logps"] for f in features])
    return batch


def completion_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs: chosen ``(B,)`` and candidates ``(B, M)``."""
    logps, _ = scoring.completion_logps(model, batch["pairs"], batch["pad_token_id"])  # (B*(1+M),)
    m = batch["num_candidates"]
    b = logps.shape[0] // (1 + m)
    return logps[:b], logps[b:].view(b, m)


@torch.no_grad()
def cache_reference_logps(model, features: list[dict], pad_token_id: int, batch_size: int = 8) -> list[dict]:
    """Score every feature once with ``model`` (the reference) and store the results.

    Returns new feature dicts with ``ref_chosen_logps`` (float) and
    ``ref_candidate_logps`` (list of M floats). After this the reference model
    is no longer needed: training reads these numbers instead.
    """
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        chosen, candidates = completion_logps(model, collate(chunk, pad_token_id))
        for f, c, k in zip(chunk, chosen.tolist(), candidates.tolist(), strict=True):
            out.append({**f, "ref_chosen_logps": c, "ref_candidate_logps": k})
    model.train(was_training)
    return out


def mcpo_batch_loss(
    model, batch: dict, *, beta: float, generator: torch.Generator | None, kernel: str = "sample"
) -> LossOutput:
    """Per-example MC-PO loss ``(B,)`` of a collated batch against its cached reference."""
    chosen, candidates = completion_logps(model, batch)
    return mcpo_loss(
        chosen,
        candidates,
        batch["ref_chosen_logps"],
        batch["ref_candidate_logps"],
        beta=beta,
        kernel=kernel,
        generator=generator,
    )
