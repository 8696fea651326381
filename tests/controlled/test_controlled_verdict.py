"""``prefpool.controlled.verdict``: the pre-registered rule of experiments/controlled/design.md on
synthetic paired differences."""

from __future__ import annotations

import pytest

from prefpool.controlled.verdict import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    REVERSED,
    Reading,
    read,
    verdict,
)

CLUSTERS = [0, 0, 0, 1, 1, 1, 2, 2, 2]
CLEAR_GAIN = [0.30, 0.25, 0.40, 0.20, 0.35, 0.30, 0.28, 0.22, 0.33]  # 9 of 9 positive: p = 2/512


def _reading(outcome: str) -> Reading:
    return Reading(9, 0.0, -1.0, 1.0, 0, 0, 1.0, outcome)


def test_read_all_positive_pairs_is_plus():
    r = read(CLEAR_GAIN, CLUSTERS)
    assert r.outcome == "+"
    assert (r.positive, r.negative, r.pairs) == (9, 0, 9)
    assert r.p == pytest.approx(2 / 512)
    assert 0 < r.low < r.mean < r.high
    assert r.cell().startswith("+0.29 [")


def test_read_all_negative_pairs_is_minus():
    assert read([-d for d in CLEAR_GAIN], CLUSTERS).outcome == "-"


def test_read_needs_the_sign_test_as_well_as_the_interval():
    """7 of 9 positive (p = 0.18) with an interval above 0 is not a +: both must hold."""
    diffs = [0.5, 0.6, 0.4, 0.5, 0.7, 0.5, 0.6, -0.01, -0.02]
    r = read(diffs, CLUSTERS)
    assert r.low > 0 and r.p == pytest.approx(92 / 512)
    assert r.outcome == "0"


def test_read_needs_the_interval_as_well_as_the_sign_test():
    """8 of 9 positive (p = 0.039), but one pair far below: the interval reaches below 0."""
    diffs = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -3.0]
    r = read(diffs, CLUSTERS)
    assert r.p == pytest.approx(20 / 512) and r.low < 0
    assert r.outcome == "0"


def test_read_with_too_few_pairs_is_not_testable():
    r = read(CLEAR_GAIN[:6], CLUSTERS[:6])
    assert r.outcome == "n/t" and r.pairs == 6
    assert r.cell() == "n/t (6 pairs)"
    assert read(CLEAR_GAIN[:7], CLUSTERS[:7]).outcome == "+"  # 7 of 7: p = 2/128


@pytest.mark.parametrize(
    "test, null, outcome",
    [
        ("++++++", None, REPRODUCED),
        ("+++000", None, REPRODUCED),  # half
        ("++0000", None, NOT_REPRODUCED),
        ("+++0-0", None, NOT_REPRODUCED),  # a reversed reading vetoes
        ("000000", None, NOT_REPRODUCED),
        ("---000", None, REVERSED),
        ("+++nnn", None, REPRODUCED),  # 3 testable readings, all +
        ("++nnnn", None, NOT_TESTABLE),  # only 2 testable
        ("nnnnnn", None, NOT_TESTABLE),
        ("++++++", "000", REPRODUCED),  # the null control shows nothing
        ("++++++", "+00", REPRODUCED),  # one null reading of three: under half
        ("++++++", "++0", NOT_TESTABLE),  # the null control shows it too: not the kernel's doing
        ("++++++", "nnn", REPRODUCED),  # an untestable null control does not veto
        ("000000", "+++", NOT_TESTABLE),
    ],
)
def test_verdict_rule(test, null, outcome):
    def readings(code):
        return [_reading("n/t" if c == "n" else c) for c in code]

    assert verdict(readings(test), None if null is None else readings(null)).outcome == outcome


def test_verdict_reports_counts_and_the_largest_interval_end():
    readings = [Reading(9, 0.1, -0.1, 0.3, 5, 4, 1.0, "0"), Reading(9, 0.2, 0.1, 0.5, 9, 0, 0.004, "+")]
    readings.append(Reading(9, 0.0, -0.2, 0.2, 4, 5, 1.0, "0"))
    v = verdict(readings)
    assert (v.outcome, v.testable, v.plus, v.minus, v.largest_high) == (NOT_REPRODUCED, 3, 1, 0, 0.5)
    assert v.reason == "+ in 1, - in 0 of 3 readings"


def test_verdict_from_synthetic_seed_pairs():
    """Six readings of a real gain at β = 1, 3 (k = 0.5, 1, 2) and a null control at β = 0.1 with noise
    around 0: reproduced; the same null control with the gain in it: not testable."""
    noise = [0.05, -0.04, 0.02, -0.03, 0.01, -0.02, 0.04, -0.05, 0.0]
    gains = [read([d + 0.01 * k for d in CLEAR_GAIN], CLUSTERS) for k in range(6)]
    null = [read(noise, CLUSTERS) for _ in range(3)]
    assert verdict(gains, null).outcome == REPRODUCED
    assert verdict(gains, gains[:3]).outcome == NOT_TESTABLE
