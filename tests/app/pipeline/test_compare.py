"""Comparison: distance, verdict, calibrated probability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.pipeline.compare import PlattScaling, decide, euclidean_distance, pairwise_distances


def test_euclidean_distance() -> None:
    assert euclidean_distance([0.0, 3.0], [4.0, 0.0]) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="one length"):
        euclidean_distance([1.0, 2.0], [1.0, 2.0, 3.0])
    rows = np.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(
        pairwise_distances(rows, rows), [[0.0, math.sqrt(2)], [math.sqrt(2), 0.0]]
    )


def test_verdict_at_and_around_the_threshold() -> None:
    assert decide(0.6, threshold=0.6, platt=None).same is True
    assert decide(0.61, threshold=0.6, platt=None).same is False
    assert decide(0.61, threshold=0.6, platt=None).confidence is None
    with pytest.raises(ValueError, match="positive"):
        decide(0.5, threshold=0.0, platt=None)


def test_platt_probability() -> None:
    platt = PlattScaling(a=20.0, b=-12.0)  # p = 0.5 at d = 0.6
    assert platt.probability(0.6) == pytest.approx(0.5)
    assert platt.probability(0.3) == pytest.approx(1 / (1 + math.exp(20 * 0.3 - 12)))
    assert platt.probability(0.2) > platt.probability(0.5) > platt.probability(0.9)
    assert platt.probability(math.inf) == 0.0
    assert platt.probability(1e6) == 0.0 and platt.probability(-1e6) == 1.0
    verdict = decide(0.3, threshold=0.6, platt=platt)
    assert verdict.confidence == pytest.approx(platt.probability(0.3))
