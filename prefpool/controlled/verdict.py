"""The pre-registered verdict rule of ``experiments/controlled/design.md``, as code.

A *comparison* is "method A beats method B", read as paired differences
``reward_A(k) - reward_B(k)`` at a matched KL ``k``, one per (data seed, training seed) pair where
both frontiers reach ``k`` and both runs are valid. One *reading* is one (β, k) of one noise arm:

- ``n/t`` (not testable): fewer than ``MIN_PAIRS`` pairs;
- ``+``: the 95 % paired-bootstrap interval (clustered by data seed) lies above 0 **and** the exact
  two-sided sign test gives p < ``ALPHA`` with more positive than negative pairs;
- ``-``: the same below 0;
- ``0``: otherwise.

The verdict of a comparison in one noise arm is read from its readings at the β where the kernel is
not uniform (``test``), and from those at the null-control β (``null``) when the comparison differs
only in the kernel:

- *not testable*: fewer than ``MIN_READINGS`` testable readings, or the null control shows the effect
  too (``+`` in at least half of its testable readings: then the difference does not come from the
  kernel's weighting);
- *reproduced*: ``+`` in at least half of the testable readings and ``-`` in none;
- *reversed*: ``-`` in at least half and ``+`` in none (a kind of "not reproduced");
- *not reproduced*: anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .stats import paired_bootstrap_ci, sign_test

MIN_PAIRS = 7  # of the 9 seed pairs: with 7, 7 of 7 positive gives sign-test p = 2/128
MIN_READINGS = 3
ALPHA = 0.05
LEVEL = 0.95
REPRODUCED, REVERSED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "reversed", "not reproduced", "not testable"


@dataclass(frozen=True)
class Reading:
    pairs: int
    mean: float | None
    low: float | None  # the bootstrap interval
    high: float | None
    positive: int
    negative: int
    p: float | None  # the sign test's
    outcome: str  # "+", "-", "0" or "n/t"

    def cell(self) -> str:
        """``+0.12 [+0.03, +0.20] 8/9 p=0.039 (+)``, or ``n/t (5 pairs)``."""
        if self.outcome == "n/t":
            return f"n/t ({self.pairs} pair{'' if self.pairs == 1 else 's'})"
        return (
            f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] {self.positive}/{self.pairs} "
            f"p={self.p:.3g} ({self.outcome})"
        )


def read(diffs: Sequence[float], clusters: Sequence[object] | None = None, *, seed: int = 0) -> Reading:
    """Classify one reading's paired differences (see the module docstring)."""
    n = len(diffs)
    if n < MIN_PAIRS:
        return Reading(n, None, None, None, 0, 0, None, "n/t")
    low, high = paired_bootstrap_ci(diffs, clusters, level=LEVEL, seed=seed)
    test = sign_test(diffs)
    outcome = "0"
    if low > 0 and test.p < ALPHA and test.positive > test.negative:
        outcome = "+"
    elif high < 0 and test.p < ALPHA and test.negative > test.positive:
        outcome = "-"
    return Reading(n, sum(diffs) / n, low, high, test.positive, test.negative, test.p, outcome)


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reason: str
    testable: int
    plus: int
    minus: int
    largest_high: float | None  # the largest interval upper end among testable readings: effects above it are excluded


def verdict(test: Sequence[Reading], null: Sequence[Reading] | None = None) -> Verdict:
    """The verdict of one comparison in one noise arm (see the module docstring)."""
    testable = [r for r in test if r.outcome != "n/t"]
    plus = sum(r.outcome == "+" for r in testable)
    minus = sum(r.outcome == "-" for r in testable)
    largest = max((r.high for r in testable), default=None)
    counts = (len(testable), plus, minus, largest)
    if len(testable) < MIN_READINGS:
        return Verdict(NOT_TESTABLE, f"{len(testable)} testable readings, need {MIN_READINGS}", *counts)
    if null is not None:
        null_testable = [r for r in null if r.outcome != "n/t"]
        null_plus = sum(r.outcome == "+" for r in null_testable)
        if null_testable and 2 * null_plus >= len(null_testable):
            return Verdict(
                NOT_TESTABLE,
                f"the null control shows the effect too ({null_plus} of {len(null_testable)} readings +)",
                *counts,
            )
    if 2 * plus >= len(testable) and minus == 0:
        return Verdict(REPRODUCED, f"+ in {plus} of {len(testable)} readings", *counts)
    if 2 * minus >= len(testable) and plus == 0:
        return Verdict(REVERSED, f"- in {minus} of {len(testable)} readings", *counts)
    return Verdict(NOT_REPRODUCED, f"+ in {plus}, - in {minus} of {len(testable)} readings", *counts)
