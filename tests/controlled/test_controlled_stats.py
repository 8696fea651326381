"""``prefpool.controlled.stats``: the matched-KL reading, the paired bootstrap and the sign test, against
hand computations."""

from __future__ import annotations

import itertools
import math

import pytest

from prefpool.controlled.stats import frontier, paired_bootstrap_ci, reward_at_kl, sign_test


def test_frontier_keeps_the_pareto_points_in_kl_order():
    points = [(0.0, -0.1), (0.8, 0.5), (1.5, 0.9), (3.0, 1.2), (1.0, 0.3), (2.0, 0.7), (1.5, 0.4)]
    assert frontier(points) == [(0.0, -0.1), (0.8, 0.5), (1.5, 0.9), (3.0, 1.2)]


def test_reward_at_kl_interpolates_linearly_between_pareto_points():
    """Between (0.8, 0.5) and (1.5, 0.9): at KL 1, 0.5 + 0.4 * 0.2 / 0.7 = 0.6142857...; at 2, between
    (1.5, 0.9) and (3.0, 1.2): 0.9 + 0.3 * 0.5 / 1.5 = 1.0. The dominated (1.0, 0.3) and (2.0, 0.7) play no part."""
    points = [(0.0, -0.1), (0.8, 0.5), (1.5, 0.9), (3.0, 1.2), (1.0, 0.3), (2.0, 0.7)]
    assert reward_at_kl(points, 1.0) == pytest.approx(0.5 + 0.4 * 0.2 / 0.7)
    assert reward_at_kl(points, 2.0) == pytest.approx(1.0)
    assert reward_at_kl(points, 0.4) == pytest.approx(-0.1 + 0.6 * 0.5)
    assert reward_at_kl(points, 0.8) == pytest.approx(0.5)  # at a Pareto point, its own reward
    assert reward_at_kl(points, 3.5) is None  # never reached: no extrapolation


def test_reward_at_kl_is_flat_past_the_last_pareto_point_up_to_the_kl_reached():
    """The run peaked at (1.0, 0.8) and went on to KL 4 at lower reward: at KL 2 and 4 its best is 0.8."""
    points = [(0.0, 0.0), (1.0, 0.8), (2.5, 0.6), (4.0, 0.2)]
    assert reward_at_kl(points, 2.0) == 0.8
    assert reward_at_kl(points, 4.0) == 0.8
    assert reward_at_kl(points, 4.01) is None


def test_reward_at_kl_is_non_decreasing():
    points = [(0.0, 0.0), (0.3, 0.4), (0.5, 0.2), (0.9, 0.9), (1.7, 0.8), (2.2, 1.4), (2.6, 1.0)]
    readings = [reward_at_kl(points, k / 10) for k in range(27)]
    assert all(b >= a for a, b in itertools.pairwise(readings))


def test_reward_at_kl_below_the_smallest_kl_and_without_points():
    assert reward_at_kl([(0.2, 1.0), (1.0, 2.0)], 0.1) is None
    assert reward_at_kl([], 1.0) is None


@pytest.mark.parametrize(
    "diffs, p",
    [
        ([1.0] * 9, 2 / 512),  # 9 of 9: 2 * (1/2)^9
        ([1.0] * 8 + [-1.0], 2 * (1 + 9) / 512),  # 8 of 9: 2 * (C(9,0) + C(9,1)) / 2^9 = 0.0390625
        ([1.0] * 7 + [-1.0] * 2, 2 * (1 + 9 + 36) / 512),  # 7 of 9: 0.1796875
        ([-1.0] * 9, 2 / 512),  # two-sided
        ([1.0] * 3, 2 / 8),  # 3 seeds cannot go below p = 0.25
        ([1.0, -1.0] * 4, 1.0),  # 4 of 8: 2 * 163/256 > 1, capped
        ([1.0, 1.0, 0.0], 2 / 4),  # the zero is dropped: 2 of 2
        ([], 1.0),
    ],
)
def test_sign_test_against_hand_computations(diffs, p):
    assert sign_test(diffs).p == pytest.approx(p, rel=1e-12)


def test_sign_test_counts():
    test = sign_test([0.5, -0.2, 0.0, 0.1])
    assert (test.positive, test.negative) == (2, 1)
    assert test.p == 1.0  # min(1, 2 * P(X <= 1)) with X ~ Bin(3, 1/2): 2 * 4/8


def test_bootstrap_of_equal_differences_is_a_point():
    assert paired_bootstrap_ci([0.3] * 9) == pytest.approx((0.3, 0.3))
    assert paired_bootstrap_ci([0.3] * 9, clusters=[0, 0, 0, 1, 1, 1, 2, 2, 2]) == pytest.approx((0.3, 0.3))


def test_bootstrap_of_two_pairs_spans_them():
    """Two differences a = 1, b = 3: the resampled mean is 1, 2 or 3 with probability 1/4, 1/2, 1/4, so
    the 2.5 % and 97.5 % quantiles are 1 and 3."""
    assert paired_bootstrap_ci([1.0, 3.0]) == (1.0, 3.0)


def test_clustered_bootstrap_resamples_clusters_first():
    """Two data seeds whose three pairs agree within the seed (1, 1, 1 and 3, 3, 3): resampling the
    clusters gives the mean 1, 2 or 3 (probability 1/4, 1/2, 1/4), so the interval is [1, 3]; resampling
    the six pairs alone would give the mean of Binomial(6, 1/2) draws: 2.5 % quantile 1 + 2 * 1/6."""
    diffs, clusters = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0], ["a", "a", "a", "b", "b", "b"]
    assert paired_bootstrap_ci(diffs, clusters) == (1.0, 3.0)
    low, high = paired_bootstrap_ci(diffs)
    assert (low, high) == pytest.approx((1 + 2 / 6, 3 - 2 / 6))


def test_clustered_bootstrap_resamples_within_a_cluster():
    """One cluster of (0, 2): the within-cluster resample alone makes the mean 0, 1 or 2."""
    assert paired_bootstrap_ci([0.0, 2.0], clusters=[7, 7]) == (0.0, 2.0)


def test_bootstrap_interval_covers_the_mean_and_is_reproducible():
    diffs = [0.1, 0.4, -0.2, 0.3, 0.5, 0.0, 0.2, 0.6, 0.1]
    clusters = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    low, high = paired_bootstrap_ci(diffs, clusters)
    assert low < sum(diffs) / 9 < high
    assert (low, high) == paired_bootstrap_ci(diffs, clusters)
    assert not math.isclose(low, paired_bootstrap_ci(diffs, clusters, seed=1)[0])


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="no differences"):
        paired_bootstrap_ci([])
    with pytest.raises(ValueError, match="2 cluster labels for 3"):
        paired_bootstrap_ci([1.0, 2.0, 3.0], clusters=[0, 1])
