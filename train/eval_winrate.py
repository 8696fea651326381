"""Win-rate of the policy's samples against the reference's, and a length-controlled win-rate (no model, no I/O).

A comparison's outcome is 1 (the policy's sample scores higher), 1/2 (equal)
or 0; a pairwise scorer gives it directly (P(policy ≻ reference), a value in
[0, 1]). Reward models and judges favour long answers, so a policy can gain
win-rate by length alone. The length-controlled win-rate follows AlpacaEval's
LC idea: fit a logistic regression of the outcome on the length difference,

    P(win) = sigmoid(b0 + b1 * tanh(d / sd(d))),  d = len(policy sample) - len(reference sample)

(lengths in characters; outcomes as soft labels; a tiny ridge on b1 keeps
the fit finite), and report the win-rate it predicts at equal lengths,
``sigmoid(b0)``. When every d is 0 it is the plain win-rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RIDGE = 1e-6


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def outcomes(policy: Sequence[float | None], reference: Sequence[float | None]) -> list[float | None]:
    """1, 1/2 or 0 per comparison of ``policy[i]`` with ``reference[i]``; None where either is None (unscored)."""
    return [
        None if a is None or b is None else 1.0 if a > b else 0.5 if a == b else 0.0
        for a, b in zip(policy, reference, strict=True)
    ]


def length_controlled_win_rate(wins: Sequence[float], length_diffs: Sequence[float], *, iterations: int = 100) -> float:
    """``sigmoid(b0)`` of the fit in the module docstring (Newton's method on the soft-label log-likelihood)."""
    n = len(wins)
    sd = math.sqrt(sum(d * d for d in length_diffs) / n - (sum(length_diffs) / n) ** 2) if n else 0.0
    xs = [math.tanh(d / sd) if sd > 0 else 0.0 for d in length_diffs]
    b0 = b1 = 0.0
    for _ in range(iterations):
        g0 = g1 = h00 = h01 = h11 = 0.0
        for w, x in zip(wins, xs, strict=True):
            p = _sigmoid(b0 + b1 * x)
            g0 += w - p
            g1 += (w - p) * x
            v = p * (1 - p)
            h00 += v
            h01 += v * x
            h11 += v * x * x
        g1 -= RIDGE * b1
        h11 += RIDGE
        det = h00 * h11 - h01 * h01
        if det <= 0:
            break
        step0 = (h11 * g0 - h01 * g1) / det
        step1 = (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + step0, b1 + step1
        if abs(step0) < 1e-12 and abs(step1) < 1e-12:
            break
    return _sigmoid(b0)


def win_rate_figures(
    policy_scores: Sequence[float],
    reference_scores: Sequence[float],
    policy_texts: Sequence[str],
    reference_texts: Sequence[str],
) -> dict:
    """``win_rate``, ``length_controlled_win_rate`` and both sides' mean length (characters)."""
    return outcome_figures(outcomes(policy_scores, reference_scores), policy_texts, reference_texts)


def outcome_figures(wins: Sequence[float | None], policy_texts: Sequence[str], reference_texts: Sequence[str]) -> dict:
    """``win_rate`` and ``length_controlled_win_rate`` of the comparisons with an outcome (None: left out, e.g. an
    unparsable verdict; both None when none has one), and both sides' mean length over every comparison."""
    kept = [
        (w, float(len(a) - len(b)))
        for w, a, b in zip(wins, policy_texts, reference_texts, strict=True)
        if w is not None
    ]
    return {
        "win_rate": sum(w for w, _ in kept) / len(kept) if kept else None,
        "length_controlled_win_rate": (
            length_controlled_win_rate([w for w, _ in kept], [d for _, d in kept]) if kept else None
        ),
        "mean_length_chars": sum(map(len, policy_texts)) / len(policy_texts),
        "ref_mean_length_chars": sum(map(len, reference_texts)) / len(reference_texts),
    }
