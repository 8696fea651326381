"""A pairwise preference model as a ``score`` scorer: P(a ≻ b | x) from a causal LM, turned into a ranking.

The model reads one user turn, ``[CONTEXT] ... [RESPONSE A] ... [RESPONSE B] ...
Which response is better? Answer A or B.``, rendered with its own chat template
(generation prompt added); P(A ≻ B) is ``sigmoid(logit("A") - logit("B"))``
at the next token (as RLHFlow's pairwise preference models are read). Each
pair is read in both orders and averaged, ``p(a, b) = (P(A=a ≻ B=b) + 1 -
P(A=b ≻ B=a)) / 2``, so a model's position bias cancels.

How a prompt's n distinct completions are ranked (``rule``):

- ``bradley-terry``: strengths ``s`` maximizing ``sum p(i, j) log sigmoid(s_i - s_j)``
  over ordered pairs (Hunter's MM iterations; mean 0). Cost: n(n - 1) forward passes.
- ``copeland``: the number of other completions it beats (``p > 0.5``; a tie
  counts 0.5). Cost: n(n - 1) forward passes.
- ``tournament``: ``p(answer, reference)`` against the prompt's reference (the
  first answer of its row, as the pairwise judge; it scores 0.5). Cost:
  2(n - 1) forward passes: the cheap mode.

A prompt's scores are computed once per worker, when its first completion is
scored (a worker holds every completion's text of every prompt).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

from prefpool.pipeline.io.errors import PipelineConfigError

Rule = Literal["bradley-terry", "copeland", "tournament"]
RULES: tuple[str, ...] = ("bradley-terry", "copeland", "tournament")
Item = tuple[list[dict], str]

TEMPLATE = """[CONTEXT]
{conversation}

[RESPONSE A]
{answer_a}

[RESPONSE B]
{answer_b}

Which response is better? Answer A or B."""


def copeland(p: Sequence[Sequence[float]]) -> list[float]:
    """Wins of each item: ``sum_j [p[i][j] > 0.5] + 0.5 [p[i][j] == 0.5]`` over ``j != i``."""
    n = len(p)
    return [sum(1.0 if p[i][j] > 0.5 else 0.5 if p[i][j] == 0.5 else 0.0 for j in range(n) if j != i) for i in range(n)]


def bradley_terry(p: Sequence[Sequence[float]], *, iterations: int = 10_000, tol: float = 1e-12) -> list[float]:
    """Bradley–Terry log-strengths (mean 0) from soft outcomes ``p[i][j]`` = P(i ≻ j), ``p[j][i] = 1 - p[i][j]``.

    Hunter's MM update for ``max sum_{i != j} p[i][j] log(pi_i / (pi_i + pi_j))``:
    ``pi_i <- W_i / sum_{j != i} 1 / (pi_i + pi_j)`` with ``W_i = sum_j p[i][j]`` (each pair
    is one comparison). Outcomes are clamped to [1e-6, 1 - 1e-6] so every strength stays finite.
    """
    n = len(p)
    if n == 1:
        return [0.0]
    q = [[min(max(p[i][j], 1e-6), 1 - 1e-6) for j in range(n)] for i in range(n)]
    wins = [sum(q[i][j] for j in range(n) if j != i) for i in range(n)]
    pi = [1.0] * n
    for _ in range(iterations):
        new = [wins[i] / sum(1.0 / (pi[i] + pi[j]) for j in range(n) if j != i) for i in range(n)]
        scale = math.exp(sum(math.log(v) for v in new) / n)
        new = [v / scale for v in new]
        done = max(abs(a - b) for a, b in zip(new, pi, strict=True)) < tol
        pi = new
        if done:
            break
    logs = [math.log(v) for v in pi]
    mean = sum(logs) / n
    return [v - mean for v in logs]


class PreferenceScorer:
    """Scores completions by a pairwise preference model (see the module docstring)."""

    def __init__(self, info, *, rule: Rule, pools: dict[str, list[str]], batch_size: int, device: str = "cpu") -> None:
        from prefpool.pipeline.engines.judge import conversation_text

        if rule not in RULES:
            raise PipelineConfigError(f"preference_rule must be one of {', '.join(RULES)}; got {rule!r}")
        self.info = info
        self.rule = rule
        self.pools = pools  # prompt_id -> its distinct completion texts, the row's first answer first
        self.batch_size = batch_size
        self.device = device
        self._conversation = conversation_text
        self.token_ids = [self._single_token(letter) for letter in ("A", "B")]
        self.identity = {
            "kind": "preference_model",
            "model": info.describe(),
            "rule": rule,
            "template_sha256": hashlib.sha256(TEMPLATE.encode("utf-8")).hexdigest(),
            "dtype": "float32",
        }
        self._model = None
        self._done: dict[str, dict[str, float]] = {}
        self.forward_passes = 0

    def _single_token(self, letter: str) -> int:
        ids = self.info.tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise PipelineConfigError(
                f"preference model {self.info.source.given}: {letter!r} is {len(ids)} tokens; it must be one"
            )
        return ids[0]

    def load(self):
        if self._model is None:
            import torch

            self._model = self.info.source.causal_lm(dtype=torch.float32).to(self.device).eval()
        return self._model

    def prefer_first(self, prompt: list[dict], pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(A ≻ B) for each (A, B) in the order given (one forward pass each, batched, right-padded)."""
        import torch

        model = self.load()
        conversation = self._conversation(prompt)
        seqs = [
            self.info.render(
                [{"role": "user", "content": TEMPLATE.format(conversation=conversation, answer_a=a, answer_b=b)}]
            )
            for a, b in pairs
        ]
        out: list[float] = []
        for start in range(0, len(seqs), self.batch_size):
            batch = seqs[start : start + self.batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), self.info.pad_token_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
            for row, s in enumerate(batch):
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits  # (B, T, V)
            last = logits[torch.arange(len(batch)), mask.sum(dim=1).to(self.device) - 1]  # (B, V)
            a, b = self.token_ids
            out.extend(torch.sigmoid((last[:, a] - last[:, b]).double()).tolist())
            self.forward_passes += len(batch)
        return out

    def preference(self, prompt: list[dict], pairs: Sequence[tuple[str, str]]) -> list[float]:
        """``p(a, b)``, both orders averaged, for each (a, b)."""
        both = self.prefer_first(prompt, [*pairs, *((b, a) for a, b in pairs)])
        k = len(pairs)
        return [(both[i] + 1.0 - both[k + i]) / 2 for i in range(k)]

    def _rank(self, prompt: list[dict], texts: list[str]) -> dict[str, float]:
        n = len(texts)
        if self.rule == "tournament":
            reference = texts[0]
            values = self.preference(prompt, [(t, reference) for t in texts[1:]])
            return {reference: 0.5, **dict(zip(texts[1:], values, strict=True))}
        upper = [(i, j) for i in range(n) for j in range(i + 1, n)]
        values = self.preference(prompt, [(texts[i], texts[j]) for i, j in upper])
        p = [[0.5] * n for _ in range(n)]
        for (i, j), v in zip(upper, values, strict=True):
            p[i][j], p[j][i] = v, 1.0 - v
        ranked = bradley_terry(p) if self.rule == "bradley-terry" else copeland(p)
        return dict(zip(texts, ranked, strict=True))

    def score(
        self, items: Sequence[Item], where: Sequence[str] | None = None, prompt_ids: Sequence[str] | None = None
    ) -> list[float]:
        assert prompt_ids is not None and len(prompt_ids) == len(items)
        out = []
        for (prompt, text), pid in zip(items, prompt_ids, strict=True):
            if pid not in self._done:
                self._done[pid] = self._rank(prompt, self.pools[pid])
            out.append(self._done[pid][text])
        return out
