"""Verification metrics on pair distances, in numpy.

Every function takes ``distances`` (float [n]; smaller means more likely the same person; +inf for
a pair where a face was missing, which is then never accepted at a finite threshold) and ``same``
(bool [n], the ground truth). A pair is accepted as the same person when distance <= threshold.

    true accept rate  TAR = accepted same pairs / same pairs
    false accept rate FAR = accepted different pairs / different pairs
    false reject rate FRR = 1 - TAR
    accuracy              = (accepted same pairs + rejected different pairs) / pairs
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

# The service owns the formula; training fits its parameters.
from app.pipeline.compare import platt_probability as platt_probability

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class RocCurve(NamedTuple):
    """Points of the ROC curve, by increasing threshold."""

    false_accept_rates: FloatArray
    true_accept_rates: FloatArray
    thresholds: FloatArray


class EqualErrorRate(NamedTuple):
    rate: float
    threshold: float


class BestThreshold(NamedTuple):
    threshold: float
    accuracy: float


class KFoldAccuracy(NamedTuple):
    mean: float
    std: float
    thresholds: FloatArray


class PlattParameters(NamedTuple):
    a: float
    b: float


@dataclass(frozen=True)
class TarAtFar:
    """The true accept rate at the largest threshold whose false accept rate is within a target.

    ``measurable`` is False when the target is below 1 / (number of different pairs): the smallest
    non-zero FAR the pairs can show is one false accept, so the point returned is the one with no
    false accept at all, whose FAR (0) says nothing about whether the target is met.
    """

    tar: float
    threshold: float
    false_accept_rate: float
    target_false_accept_rate: float
    measurable: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "tar": self.tar,
            "threshold": self.threshold,
            "far": self.false_accept_rate,
            "target_far": self.target_false_accept_rate,
            "measurable": self.measurable,
        }


def validate(distances: npt.ArrayLike, same: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
    """Returns the inputs as 1-D float64 and bool arrays; raises ValueError on bad input."""
    distance_array = np.asarray(distances, dtype=np.float64)
    same_array = np.asarray(same)
    if distance_array.ndim != 1 or same_array.ndim != 1:
        raise ValueError("Pass distances and same as one-dimensional arrays, one entry per pair.")
    if distance_array.shape != same_array.shape:
        raise ValueError(
            f"Got {distance_array.size} distances but {same_array.size} same flags; pass one of "
            "each per pair."
        )
    if same_array.dtype != np.bool_:
        if not np.all((same_array == 0) | (same_array == 1)):
            raise ValueError("same must hold booleans (or 0/1), one per pair.")
        same_array = same_array.astype(np.bool_)
    if np.any(np.isnan(distance_array)) or np.any(distance_array == -np.inf):
        raise ValueError(
            "Distances must be numbers or +inf (a pair with a missing face); remove NaN and -inf."
        )
    if not np.any(same_array) or np.all(same_array):
        raise ValueError(
            "The pairs need at least one same-person pair and one different-person pair."
        )
    return distance_array, same_array


def _require_finite(distances: FloatArray) -> None:
    if not np.any(np.isfinite(distances)):
        raise ValueError(
            "Every distance is infinite (no pair had both faces found); a threshold needs at "
            "least one finite distance."
        )


def roc_curve(distances: npt.ArrayLike, same: npt.ArrayLike) -> RocCurve:
    """TAR and FAR when accepting distance <= threshold, for every unique finite distance.

    The thresholds are -inf (nothing accepted: the point (0, 0)), each unique finite distance in
    increasing order, and +inf (everything accepted, missing faces included: the point (1, 1)).
    """
    distance_array, same_array = validate(distances, same)
    finite = np.unique(distance_array[np.isfinite(distance_array)])
    thresholds = np.concatenate(([-np.inf], finite, [np.inf]))
    same_sorted = np.sort(distance_array[same_array])
    different_sorted = np.sort(distance_array[~same_array])
    accepted_same = np.searchsorted(same_sorted, thresholds, side="right")
    accepted_different = np.searchsorted(different_sorted, thresholds, side="right")
    # searchsorted counts +inf distances as <= +inf, so the last point is (1, 1) as intended.
    return RocCurve(
        false_accept_rates=accepted_different / different_sorted.size,
        true_accept_rates=accepted_same / same_sorted.size,
        thresholds=thresholds,
    )


def roc_auc(distances: npt.ArrayLike, same: npt.ArrayLike) -> float:
    """Area under the ROC curve (trapezoidal over TAR against FAR).

    Equals the Mann-Whitney probability that a random same pair has a smaller distance than a
    random different pair, ties counting half: a threshold where both kinds of pair are tied adds a
    diagonal segment, whose trapezoid counts those ties as half.
    """
    curve = roc_curve(distances, same)
    return float(np.trapezoid(curve.true_accept_rates, curve.false_accept_rates))


def equal_error_rate(distances: npt.ArrayLike, same: npt.ArrayLike) -> EqualErrorRate:
    """The rate where FAR equals FRR, and its threshold.

    Along the ROC points g = FAR - FRR rises from -1 to 1. Between the two neighbouring points
    where g changes sign, FAR, FRR and the threshold are interpolated linearly at g = 0:
    w = -g0 / (g1 - g0), rate = FAR0 + w * (FAR1 - FAR0), threshold = t0 + w * (t1 - t0). When one
    neighbour is an infinite end point the threshold is the finite neighbour's.
    """
    distance_array, same_array = validate(distances, same)
    _require_finite(distance_array)
    curve = roc_curve(distance_array, same_array)
    far = curve.false_accept_rates
    frr = 1.0 - curve.true_accept_rates
    gap = far - frr
    # gap[0] == -1 and gap[-1] == 1, so a crossing index >= 1 always exists.
    upper = int(np.argmax(gap >= 0))
    lower = upper - 1
    low_threshold, high_threshold = curve.thresholds[lower], curve.thresholds[upper]
    if gap[upper] == 0:
        return EqualErrorRate(rate=float(far[upper]), threshold=float(high_threshold))
    weight = -gap[lower] / (gap[upper] - gap[lower])
    rate = far[lower] + weight * (far[upper] - far[lower])
    if not np.isfinite(low_threshold):
        threshold = high_threshold
    elif not np.isfinite(high_threshold):
        threshold = low_threshold
    else:
        threshold = low_threshold + weight * (high_threshold - low_threshold)
    return EqualErrorRate(rate=float(rate), threshold=float(threshold))


def true_accept_rate_at(
    distances: npt.ArrayLike, same: npt.ArrayLike, *, false_accept_rate: float
) -> TarAtFar:
    """TAR at the largest threshold (an observed distance) whose FAR <= ``false_accept_rate``.

    When the target is below 1 / (number of different pairs) it is not measurable on these pairs:
    the point returned is then the largest threshold with no false accept, flagged
    ``measurable=False``. When even the smallest distance belongs to a different pair, the
    threshold is just below it and TAR is 0.
    """
    if not 0.0 < false_accept_rate < 1.0:
        raise ValueError(
            f"false_accept_rate must be between 0 and 1 (exclusive), got {false_accept_rate}."
        )
    distance_array, same_array = validate(distances, same)
    _require_finite(distance_array)
    curve = roc_curve(distance_array, same_array)
    different_pairs = int(np.count_nonzero(~same_array))
    # Only the finite thresholds are candidates: -inf and +inf are not usable operating points.
    finite = np.isfinite(curve.thresholds)
    allowed = np.flatnonzero(finite & (curve.false_accept_rates <= false_accept_rate))
    if allowed.size:
        index = int(allowed[-1])
        threshold = float(curve.thresholds[index])
        tar = float(curve.true_accept_rates[index])
        far = float(curve.false_accept_rates[index])
    else:
        smallest = float(curve.thresholds[finite][0])
        threshold = float(np.nextafter(smallest, -np.inf))
        tar, far = 0.0, 0.0
    return TarAtFar(
        tar=tar,
        threshold=threshold,
        false_accept_rate=far,
        target_false_accept_rate=false_accept_rate,
        measurable=false_accept_rate >= 1.0 / different_pairs,
    )


def accuracy_at(distances: npt.ArrayLike, same: npt.ArrayLike, *, threshold: float) -> float:
    """Fraction of pairs judged correctly when accepting distance <= ``threshold``."""
    distance_array, same_array = validate(distances, same)
    if np.isnan(threshold):
        raise ValueError("threshold is NaN; pass a number.")
    accepted = distance_array <= threshold
    return float(np.mean(accepted == same_array))


def best_threshold(distances: npt.ArrayLike, same: npt.ArrayLike) -> BestThreshold:
    """The threshold with the highest accuracy, and that accuracy.

    Candidates are the midpoints between consecutive unique finite distances, plus the largest
    finite distance (accept every finite pair) and the value just below the smallest (accept
    none). Of equally accurate candidates the smallest is returned.
    """
    distance_array, same_array = validate(distances, same)
    _require_finite(distance_array)
    finite = np.unique(distance_array[np.isfinite(distance_array)])
    same_sorted = np.sort(distance_array[same_array])
    different_sorted = np.sort(distance_array[~same_array])
    # Accepting distance <= finite[k] gives the same verdicts as any threshold in
    # [finite[k], finite[k + 1]), so the counts are taken at the unique distances themselves.
    accepted_same = np.searchsorted(same_sorted, finite, side="right")
    accepted_different = np.searchsorted(different_sorted, finite, side="right")
    correct = np.concatenate(
        ([different_sorted.size], accepted_same + (different_sorted.size - accepted_different))
    )
    candidates = np.concatenate(
        (
            [np.nextafter(finite[0], -np.inf)],
            (finite[:-1] + finite[1:]) / 2.0,
            [finite[-1]],
        )
    )
    best = int(np.argmax(correct))
    return BestThreshold(
        threshold=float(candidates[best]), accuracy=float(correct[best] / distance_array.size)
    )


def kfold_accuracy(
    distances: npt.ArrayLike, same: npt.ArrayLike, *, folds: int = 10
) -> KFoldAccuracy:
    """LFW's protocol: mean and standard deviation of the accuracy over ``folds`` folds.

    The pairs are split, in the given order, into ``folds`` contiguous folds of (nearly) equal size
    (LFW's pairs.txt is ordered by fold). For each fold the threshold is ``best_threshold`` on the
    other folds and the accuracy is measured on the fold itself. std is the population standard
    deviation of the fold accuracies (numpy's default, as most published LFW figures use).
    """
    distance_array, same_array = validate(distances, same)
    if folds < 2 or folds > distance_array.size:
        raise ValueError(
            f"folds must be between 2 and the number of pairs ({distance_array.size}), got {folds}."
        )
    accuracies = np.empty(folds)
    thresholds = np.empty(folds)
    for fold, test in enumerate(np.array_split(np.arange(distance_array.size), folds)):
        train = np.ones(distance_array.size, dtype=np.bool_)
        train[test] = False
        train_same = same_array[train]
        if np.all(train_same) or not np.any(train_same):
            raise ValueError(
                f"Fold {fold + 1} leaves only one kind of pair to choose a threshold on; shuffle "
                "the pairs or use fewer folds."
            )
        if not np.any(np.isfinite(distance_array[train])):
            raise ValueError(
                f"Fold {fold + 1} leaves no finite distance to choose a threshold on; use fewer "
                "folds or pairs with faces found."
            )
        threshold = best_threshold(distance_array[train], train_same).threshold
        thresholds[fold] = threshold
        accuracies[fold] = np.mean((distance_array[test] <= threshold) == same_array[test])
    return KFoldAccuracy(
        mean=float(np.mean(accuracies)), std=float(np.std(accuracies)), thresholds=thresholds
    )


def fit_platt(
    distances: npt.ArrayLike, same: npt.ArrayLike, *, max_iterations: int = 100
) -> PlattParameters:
    """Fits p(same | d) = 1 / (1 + exp(a * d + b)) by regularised maximum likelihood.

    Platt's method (Platt 1999, with the Newton iteration of Lin, Lin and Weng 2007): the 0/1
    labels are replaced by targets t = (N+ + 1) / (N+ + 2) for same pairs and t = 1 / (N- + 2) for
    different pairs, N+ and N- being their counts, which keeps a and b finite on separable data.
    With f = a * d + b and p = 1 / (1 + exp(f)), the loss
        L = sum t * log(1 + exp(f)) + (1 - t) * log(1 + exp(-f))
    has gradient (sum (t - p) * d, sum (t - p)) and Hessian sum p * (1 - p) * [[d^2, d], [d, 1]];
    Newton steps with a backtracking line search minimise it. Only finite distances are used.
    a comes out positive when the probability falls with distance.
    """
    distance_array, same_array = validate(distances, same)
    finite = np.isfinite(distance_array)
    distance_array, same_array = distance_array[finite], same_array[finite]
    positives = int(np.count_nonzero(same_array))
    negatives = distance_array.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(
            "Fitting needs at least one same and one different pair with a finite distance."
        )
    targets = np.where(same_array, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))

    def loss(a: float, b: float) -> float:
        f = a * distance_array + b
        return float(
            np.sum(targets * np.logaddexp(0.0, f) + (1.0 - targets) * np.logaddexp(0.0, -f))
        )

    a, b = 0.0, float(np.log((negatives + 1.0) / (positives + 1.0)))
    value = loss(a, b)
    for _ in range(max_iterations):
        p = np.exp(-np.logaddexp(0.0, a * distance_array + b))
        residual = targets - p
        gradient = np.array([np.sum(residual * distance_array), np.sum(residual)])
        if np.max(np.abs(gradient)) < 1e-10 * distance_array.size:
            break
        weight = p * (1.0 - p)
        # A tiny ridge keeps the Hessian invertible when every p saturates to 0 or 1.
        hessian = np.array(
            [
                [np.sum(weight * distance_array**2) + 1e-12, np.sum(weight * distance_array)],
                [np.sum(weight * distance_array), np.sum(weight) + 1e-12],
            ]
        )
        step = -np.linalg.solve(hessian, gradient)
        slope = float(gradient @ step)
        scale = 1.0
        while scale >= 1e-10:
            new_a, new_b = a + scale * step[0], b + scale * step[1]
            new_value = loss(new_a, new_b)
            if new_value < value + 1e-4 * scale * slope:
                break
            scale /= 2.0
        else:
            # Near the optimum the loss stops changing in floating point; only a stall far from it
            # is worth a warning.
            if np.max(np.abs(gradient)) > 1e-5 * distance_array.size:
                logger.warning("Platt fit: the line search stalled; keeping the last parameters")
            break
        a, b, value = float(new_a), float(new_b), new_value
    else:
        logger.warning("Platt fit: no convergence after %d Newton iterations", max_iterations)
    return PlattParameters(a=a, b=b)
