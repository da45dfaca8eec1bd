"""Compare two embeddings: Euclidean distance, a verdict against a threshold, a probability."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.float64]


@overload
def platt_probability(distances: float, *, a: float, b: float) -> float: ...


@overload
def platt_probability(distances: npt.NDArray[Any], *, a: float, b: float) -> Float64Array: ...


def platt_probability(
    distances: float | npt.NDArray[Any], *, a: float, b: float
) -> float | Float64Array:
    """p(same | d) = 1 / (1 + exp(a * d + b)), computed as exp(-logaddexp(0, a * d + b)).

    The log-sum form never overflows; an infinite distance (a missing face) gives 0.
    """
    values = np.asarray(distances, dtype=np.float64)
    if np.any(np.isnan(values)):
        raise ValueError("Distances must not be NaN; pass numbers or +inf for a missing face.")
    infinite = np.isposinf(values)
    # The infinite distances are zeroed first because a * inf is NaN when a is 0.
    probability = np.exp(-np.logaddexp(0.0, a * np.where(infinite, 0.0, values) + b))
    probability = np.where(infinite, 0.0, probability)
    if np.ndim(distances) == 0:
        return float(probability)
    return probability


@dataclass(frozen=True)
class PlattScaling:
    """Maps a distance d to the probability of the same person: p = 1 / (1 + exp(a * d + b)).

    ``a`` is positive for a useful model (the probability falls as the distance grows).
    """

    a: float
    b: float

    def probability(self, distance: float) -> float:
        return platt_probability(distance, a=self.a, b=self.b)


@dataclass(frozen=True)
class Verdict:
    """The answer to "same person?" for one pair of embeddings."""

    same: bool
    distance: float
    threshold: float
    confidence: float | None  # the calibrated probability of the same person; None uncalibrated


def euclidean_distance(first: npt.ArrayLike, second: npt.ArrayLike) -> float:
    """sqrt(sum((first - second)^2)), computed in float64."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Embeddings must be two vectors of one length, got {a.shape}, {b.shape}.")
    return float(np.linalg.norm(a - b))


def pairwise_distances(first: npt.ArrayLike, second: npt.ArrayLike) -> Float64Array:
    """Distances between every row of ``first`` [N, D] and every row of ``second`` [M, D]."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    return np.asarray(np.linalg.norm(a[:, np.newaxis, :] - b[np.newaxis, :, :], axis=2))


def decide(distance: float, *, threshold: float, platt: PlattScaling | None) -> Verdict:
    """Same person when the distance is at or below the threshold."""
    if threshold <= 0 or not math.isfinite(threshold):
        raise ValueError(f"The threshold must be a positive number, got {threshold}.")
    confidence = platt.probability(distance) if platt is not None else None
    return Verdict(
        same=distance <= threshold, distance=distance, threshold=threshold, confidence=confidence
    )
