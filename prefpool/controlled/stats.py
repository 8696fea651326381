"""The statistics of the paired design (``experiments/controlled/design.md``).

- ``frontier`` / ``reward_at_kl``: a method's reward read at a matched KL off its reward-KL frontier.
  The points are every probe of every learning rate of one (method, data seed, training seed, β,
  noise arm). The frontier is their upper-left Pareto set: a point is kept when every point at
  lower or equal KL has lower reward. Between two frontier points the reward is read linearly,
  so the reading is non-decreasing in KL. A linear reading is reachable: a mixture of the two
  policies gets the mixed reward at a KL no larger than the mixed KL (KL is convex in its first
  argument). Past the last frontier point the reading stays flat up to the largest KL any point
  reached; beyond that it is ``None``, because the method never got that far and nothing is
  extrapolated.
- ``paired_bootstrap_ci``: percentile interval of the mean paired difference. It resamples the
  seed pairs with replacement, or, given clusters (the data seed of each pair), resamples
  clusters first and then pairs within each drawn cluster, because pairs that share a data seed
  share their data.
- ``sign_test``: exact two-sided sign test. Zero differences are dropped, and
  ``p = min(1, 2 P(X <= min(k, n - k)))`` with ``X ~ Binomial(n, 1/2)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]  # (KL to the reference, true reward)


def frontier(points: Sequence[Point]) -> list[Point]:
    """The Pareto points of ``points``: increasing in KL and strictly increasing in reward."""
    kept: list[Point] = []
    for kl, reward in sorted(points, key=lambda p: (p[0], -p[1])):
        if not kept or reward > kept[-1][1]:
            kept.append((kl, reward))
    return kept


def reward_at_kl(points: Sequence[Point], kl: float) -> float | None:
    """The frontier's reward at ``kl``: linear between Pareto points, flat after the last one up to the
    largest KL reached, ``None`` below the smallest KL or above the largest (see the module docstring)."""
    if not points:
        return None
    front = frontier(points)
    reached = max(k for k, _ in points)
    if kl < front[0][0] or kl > reached:
        return None
    for (k0, r0), (k1, r1) in itertools.pairwise(front):
        if k0 <= kl <= k1:
            return r0 if k1 == k0 else r0 + (r1 - r0) * (kl - k0) / (k1 - k0)
    return front[-1][1]  # past the last Pareto point, within the KL reached


@dataclass(frozen=True)
class SignTest:
    positive: int
    negative: int
    p: float


def sign_test(diffs: Sequence[float]) -> SignTest:
    """Exact two-sided sign test of ``diffs`` (zeros dropped): 9 of 9 positive gives p = 2/512."""
    positive = sum(d > 0 for d in diffs)
    negative = sum(d < 0 for d in diffs)
    n = positive + negative
    tail = sum(math.comb(n, i) for i in range(min(positive, negative) + 1)) / 2**n
    return SignTest(positive, negative, min(1.0, 2 * tail))


def paired_bootstrap_ci(
    diffs: Sequence[float],
    clusters: Sequence[object] | None = None,
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile ``level`` interval of the mean of ``diffs`` over ``resamples`` bootstrap draws.

    Without ``clusters``, each draw takes ``len(diffs)`` pairs with replacement. With them (one label
    per pair), each draw takes as many clusters as there are, with replacement, then, inside each
    drawn cluster, as many of its pairs as it has, with replacement, and averages every pair taken.
    """
    values = np.asarray(diffs, dtype=np.float64)
    if values.size == 0:
        raise ValueError("paired_bootstrap_ci: no differences")
    rng = np.random.default_rng(seed)
    if clusters is None:
        picks = rng.integers(0, values.size, size=(resamples, values.size))
        means = values[picks].mean(axis=1)
    else:
        if len(clusters) != values.size:
            raise ValueError(f"paired_bootstrap_ci: {len(clusters)} cluster labels for {values.size} differences")
        groups = [values[[i for i, c in enumerate(clusters) if c == label]] for label in dict.fromkeys(clusters)]
        drawn = rng.integers(0, len(groups), size=(resamples, len(groups)))
        sums, counts = np.zeros(resamples), np.zeros(resamples)
        for g, group in enumerate(groups):
            # each draw of cluster g resamples its pairs; the draws of one resample are independent
            times = (drawn == g).sum(axis=1)  # (resamples,)
            for repeat in range(1, int(times.max(initial=0)) + 1):
                rows = times >= repeat
                picks = rng.integers(0, group.size, size=(int(rows.sum()), group.size))
                sums[rows] += group[picks].sum(axis=1)
                counts[rows] += group.size
        means = sums / counts
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
