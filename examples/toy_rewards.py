"""A toy reward for ``prefpool online``/``score``, called as ``f(prompt_messages, completion) -> float``.

``length_reward``: the completion's length in characters. Meaningless as a
goal, but it varies between the samples of an untrained tiny model, so the
example config (``configs/online-tiny.yaml``) gets non-empty MC-PO pools.
The controlled task's rewards (a known reward and a noisy annotator) are in
``prefpool.controlled.task``.
"""

from __future__ import annotations


def length_reward(prompt: list[dict[str, str]], completion: str) -> float:
    return float(len(completion))
