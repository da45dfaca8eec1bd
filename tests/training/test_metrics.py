"""Verification metrics, checked against brute force and cases worked out by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from training import metrics

INF = math.inf


def mann_whitney(distances: np.ndarray, same: np.ndarray) -> float:
    """P(random same pair's distance < random different pair's), ties half; brute force."""
    positive = distances[same][:, np.newaxis]
    negative = distances[~same][np.newaxis, :]
    # Infinite distances tie with each other: compare them without inf - inf.
    smaller = positive < negative
    equal = positive == negative
    return float(np.mean(smaller + 0.5 * equal))


def separated(seed: int = 0, n: int = 500, spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    distances = np.concatenate([rng.normal(0.4, spread, n), rng.normal(0.8, spread, n)])
    same = np.concatenate([np.ones(n, dtype=bool), np.zeros(n, dtype=bool)])
    order = rng.permutation(2 * n)
    return distances[order], same[order]


def test_roc_curve_small_case() -> None:
    distances = np.array([0.1, 0.2, 0.2, 0.5, INF])
    same = np.array([True, True, False, False, True])
    curve = metrics.roc_curve(distances, same)
    np.testing.assert_array_equal(curve.thresholds, [-INF, 0.1, 0.2, 0.5, INF])
    np.testing.assert_allclose(curve.true_accept_rates, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.false_accept_rates, [0, 0, 0.5, 1, 1])


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_mann_whitney_probability(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    same = rng.random(n) < 0.4
    # Rounded, so there are many ties, and a few infinite distances as for missing faces.
    distances = np.round(rng.normal(np.where(same, 0.5, 0.8), 0.2), 1)
    distances[rng.random(n) < 0.05] = INF
    assert metrics.roc_auc(distances, same) == pytest.approx(mann_whitney(distances, same))


def test_auc_extremes() -> None:
    assert metrics.roc_auc([0.1, 0.9], [True, False]) == 1.0
    assert metrics.roc_auc([0.9, 0.1], [True, False]) == 0.0
    assert metrics.roc_auc([0.5, 0.5], [True, False]) == 0.5


def test_equal_error_rate_is_interpolated() -> None:
    # Same at 0.1, 0.3; different at 0.2, 0.4. ROC points by threshold:
    # 0.1: FAR 0, FRR 0.5; 0.2: FAR 0.5, FRR 0.5 -> an exact crossing at 0.2.
    result = metrics.equal_error_rate([0.1, 0.3, 0.2, 0.4], [True, True, False, False])
    assert tuple(result) == pytest.approx((0.5, 0.2))
    # Same at 0.1, 0.2, 0.3, 0.6; different at 0.25, 0.4, 0.5, 0.7.
    # At 0.2: FAR 0, FRR 0.5 (gap -0.5); at 0.25: FAR 0.25, FRR 0.5 (gap -0.25);
    # at 0.3: FAR 0.25, FRR 0.25 (gap 0) -> 0.25 at threshold 0.3.
    distances = [0.1, 0.2, 0.3, 0.6, 0.25, 0.4, 0.5, 0.7]
    same = [True] * 4 + [False] * 4
    assert tuple(metrics.equal_error_rate(distances, same)) == pytest.approx((0.25, 0.3))
    # Same at 0.1, 0.3, 0.5; different at 0.2, 0.4: at 0.2 FAR 0.5, FRR 2/3 (gap -1/6); at 0.3
    # FAR 0.5, FRR 1/3 (gap 1/6): halfway, rate 0.5, threshold 0.25.
    result = metrics.equal_error_rate([0.1, 0.3, 0.5, 0.2, 0.4], [True, True, True, False, False])
    assert tuple(result) == pytest.approx((0.5, 0.25))


def test_equal_error_rate_on_separated_data() -> None:
    distances, same = separated()
    eer = metrics.equal_error_rate(distances, same)
    assert eer.rate < 0.05
    assert 0.55 < eer.threshold < 0.65


def test_true_accept_rate_at_a_false_accept_rate() -> None:
    # Different pairs at 0.3, 0.5, 0.6, 0.7 (4 pairs: FAR steps of 0.25).
    distances = [0.1, 0.2, 0.4, 0.55, 0.3, 0.5, 0.6, 0.7]
    same = [True] * 4 + [False] * 4
    point = metrics.true_accept_rate_at(distances, same, false_accept_rate=0.25)
    # The largest threshold with FAR <= 0.25 is 0.4 (0.5 would make it 0.5).
    assert (point.tar, point.threshold, point.false_accept_rate) == (0.75, 0.4, 0.25)
    assert point.measurable
    strict = metrics.true_accept_rate_at(distances, same, false_accept_rate=0.1)
    # Below 1/4 it is not measurable: the point with no false accept is returned.
    assert (strict.tar, strict.threshold, strict.false_accept_rate) == (0.5, 0.2, 0.0)
    assert not strict.measurable


def test_true_accept_rate_when_the_smallest_distance_is_a_different_pair() -> None:
    point = metrics.true_accept_rate_at([0.5, 0.1], [True, False], false_accept_rate=0.5)
    assert point.tar == 0.0 and point.threshold < 0.1 and point.false_accept_rate == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        metrics.true_accept_rate_at([0.5, 0.1], [True, False], false_accept_rate=0.0)


def test_best_threshold_and_accuracy() -> None:
    distances = [0.1, 0.2, 0.3, 0.5, INF, 0.4, 0.6, 0.7]
    same = [True, True, True, True, True, False, False, False]
    best = metrics.best_threshold(distances, same)
    # Accepting <= 0.3 gets 3 same + 3 different right; <= 0.5 gets 4 + 2: both 6/8. The smaller
    # wins, at the midpoint between 0.3 and 0.4.
    assert tuple(best) == pytest.approx((0.35, 0.75))
    assert metrics.accuracy_at(distances, same, threshold=best.threshold) == 0.75
    assert metrics.accuracy_at(distances, same, threshold=INF) == 5 / 8
    assert metrics.accuracy_at(distances, same, threshold=0.0) == 3 / 8


def test_best_threshold_separates_clusters() -> None:
    distances, same = separated(spread=0.02)
    best = metrics.best_threshold(distances, same)
    assert best.accuracy == 1.0
    assert 0.5 < best.threshold < 0.7


def test_kfold_accuracy_uses_contiguous_folds() -> None:
    # Two folds: fold 1 prefers a threshold near 0.25, fold 2 near 0.65. Each fold is scored
    # with the threshold learnt on the other one.
    distances = [0.2, 0.3, 0.2, 0.3, 0.6, 0.7, 0.6, 0.7]
    same = [True, False, True, False, True, False, True, False]
    result = metrics.kfold_accuracy(distances, same, folds=2)
    np.testing.assert_allclose(result.thresholds, [0.65, 0.25])
    # Fold 1 at 0.65 accepts everything: 2/4; fold 2 at 0.25 rejects everything: 2/4.
    assert (result.mean, result.std) == (0.5, 0.0)


def test_kfold_accuracy_on_separated_data() -> None:
    distances, same = separated()
    result = metrics.kfold_accuracy(distances, same)
    assert len(result.thresholds) == 10
    assert result.mean > 0.95 and 0 < result.std < 0.05


def test_kfold_rejects_unusable_folds() -> None:
    with pytest.raises(ValueError, match="folds must be between 2"):
        metrics.kfold_accuracy([0.1, 0.2], [True, False], folds=3)
    with pytest.raises(ValueError, match="only one kind of pair"):
        metrics.kfold_accuracy([0.1, 0.2], [True, False], folds=2)


def test_platt_matches_a_case_worked_by_hand() -> None:
    # One same pair at 0 and one different at 1: the targets are (1 + 1) / (1 + 2) = 2/3 and
    # 1 / (1 + 2) = 1/3. Two points, two parameters: the fit is exact, p(0) = 2/3 and p(1) = 1/3.
    # 1 / (1 + exp(b)) = 2/3 gives b = -ln 2; 1 / (1 + exp(a + b)) = 1/3 gives a + b = ln 2.
    a, b = metrics.fit_platt([0.0, 1.0], [True, False])
    assert a == pytest.approx(2 * math.log(2), abs=1e-9)
    assert b == pytest.approx(-math.log(2), abs=1e-9)


def test_platt_fit_is_a_stationary_point_of_the_smoothed_likelihood() -> None:
    distances, same = separated(seed=3, spread=0.15)
    a, b = metrics.fit_platt(distances, same)
    positives, negatives = int(same.sum()), int((~same).sum())
    targets = np.where(same, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    residual = targets - metrics.platt_probability(distances, a=a, b=b)
    assert abs(np.sum(residual)) < 1e-6
    assert abs(np.sum(residual * distances)) < 1e-6


def test_platt_probability_is_one_half_at_the_boundary() -> None:
    distances, same = separated(seed=1, spread=0.05)
    # An infinite distance (missing face) must not disturb the fit.
    distances = np.append(distances, INF)
    same = np.append(same, True)
    a, b = metrics.fit_platt(distances, same)
    assert a > 0
    assert metrics.platt_probability(0.6, a=a, b=b) == pytest.approx(0.5, abs=0.1)
    assert -b / a == pytest.approx(0.6, abs=0.02)
    assert metrics.platt_probability(0.3, a=a, b=b) > 0.99
    assert metrics.platt_probability(0.9, a=a, b=b) < 0.01


def test_platt_probability_is_numerically_stable() -> None:
    values = metrics.platt_probability(np.array([-1e6, 0.0, 1e6, INF]), a=50.0, b=-25.0)
    np.testing.assert_allclose(values, [1.0, 1 / (1 + math.exp(-25.0)), 0.0, 0.0])
    assert metrics.platt_probability(INF, a=0.0, b=0.0) == 0.0
    assert isinstance(metrics.platt_probability(0.5, a=1.0, b=0.0), float)
    with pytest.raises(ValueError, match="NaN"):
        metrics.platt_probability(np.array([math.nan]), a=1.0, b=0.0)


@pytest.mark.parametrize(
    ("distances", "same", "message"),
    [
        ([0.1, 0.2], [True], "one of each per pair"),
        ([0.1, 0.2], [True, True], "at least one same-person pair and one different"),
        ([0.1, 0.2], [False, False], "at least one same-person pair and one different"),
        ([0.1, math.nan], [True, False], "remove NaN"),
        ([0.1, -INF], [True, False], "remove NaN and -inf"),
        ([[0.1, 0.2]], [[True, False]], "one-dimensional"),
        ([0.1, 0.2], [1, 2], "booleans"),
    ],
)
def test_rejects_invalid_inputs(distances: list[Any], same: list[Any], message: str) -> None:
    for function in (metrics.roc_curve, metrics.roc_auc, metrics.best_threshold, metrics.fit_platt):
        with pytest.raises(ValueError, match=message):
            function(distances, same)


def test_thresholds_need_a_finite_distance() -> None:
    with pytest.raises(ValueError, match="Every distance is infinite"):
        metrics.equal_error_rate([INF, INF], [True, False])
    with pytest.raises(ValueError, match="one same and one different pair with a finite"):
        metrics.fit_platt([0.1, INF], [True, False])
