"""Toy rewards for ``prefpool online``/``score``, called as ``f(prompt_messages, completion) -> float``.

- ``length_reward``: the completion's length in characters. Meaningless as a
  goal, but it varies between the samples of an untrained tiny model, so the
  example config (``configs/online-tiny.yaml``) gets non-empty MC-PO pools.
- ``lexicon_reward``: the controlled task's hidden reward
  (``prefpool.controlled_task.true_reward``: positive minus negative
  adjectives), for a reference made with ``train_reference_model``.
"""

from __future__ import annotations

from prefpool.controlled_task import true_reward


def length_reward(prompt: list[dict[str, str]], completion: str) -> float:
    return float(len(completion))


def lexicon_reward(prompt: list[dict[str, str]], completion: str) -> float:
    return true_reward(completion)
