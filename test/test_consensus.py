import math

import pytest

from ktamv_helper.consensus import ConsensusResult, consensus


def test_median_of_agreeing_centres_with_outliers_dropped():
    centres = [(100.0, 50.0), (100.2, 50.1), (140.0, 10.0), (99.9, 49.8),
               (100.1, 50.3), (300.0, 200.0)]
    result = consensus(centres, tolerance=1.0, needed=3)
    assert isinstance(result, ConsensusResult)
    assert result.used == [0, 1, 3, 4]
    assert result.center == pytest.approx((100.05, 50.05))
    expected_spread = max(math.hypot(u - 100.05, v - 50.05)
                          for u, v in (centres[i] for i in result.used))
    assert result.spread == pytest.approx(expected_spread)
    center, used, spread = result          # also unpacks like a tuple
    assert used == result.used


def test_not_enough_agreeing_centres_is_none():
    centres = [(10.0, 10.0), (10.5, 10.0), (20.0, 20.0), (30.0, 30.0)]
    assert consensus(centres, tolerance=1.0, needed=3) is None
    assert consensus(centres, tolerance=1.0, needed=2).used == [0, 1]


def test_empty_and_single():
    assert consensus([], tolerance=1.0, needed=1) is None
    result = consensus([(5.5, 6.5)], tolerance=0.5, needed=1)
    assert result.center == (5.5, 6.5) and result.used == [0] and result.spread == 0


def test_largest_cluster_wins_over_first_seen():
    centres = [(0.0, 0.0), (50.0, 50.0), (50.3, 50.0), (50.1, 49.8), (0.2, 0.1)]
    result = consensus(centres, tolerance=1.0, needed=2)
    assert result.used == [1, 2, 3]
    assert result.center == pytest.approx((50.1, 50.0))


def test_every_used_centre_is_within_tolerance():
    # A chain of points each within tolerance of its neighbour: the result
    # must not swallow the whole chain.
    centres = [(i * 0.6, 0.0) for i in range(8)]
    result = consensus(centres, tolerance=1.0, needed=2)
    for i in result.used:
        assert math.hypot(centres[i][0] - result.center[0],
                          centres[i][1] - result.center[1]) <= 1.0
    assert result.spread <= 1.0
    assert result.used == [1, 2, 3]  # the first densest neighbourhood


def test_bad_tolerance_raises():
    with pytest.raises(ValueError):
        consensus([(1, 2)], tolerance=0, needed=1)
