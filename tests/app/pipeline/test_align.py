"""Similarity alignment: the least-squares fit, the warp's pixel conventions, the template."""

from __future__ import annotations

import numpy as np
import pytest

from app.pipeline.align import align_face, estimate_similarity, reduce_for_warp, warp_affine
from tests.helpers import dlib_chips


def _similarity(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[scale * cos, -scale * sin, shift[0]], [scale * sin, scale * cos, shift[1]]])


def test_recovers_a_known_similarity() -> None:
    points = np.random.default_rng(0).uniform(0, 200, (5, 2))
    truth = _similarity(0.3, 1.7, (12.0, -40.0))
    moved = points @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(estimate_similarity(points, moved), truth, atol=1e-9)


def test_never_reflects() -> None:
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [7.0, 7.0]])
    mirrored = points * [-1.0, 1.0]
    matrix = estimate_similarity(points, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_rejects_degenerate_points() -> None:
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="matching"):
        estimate_similarity(np.ones((5, 2)), np.zeros((4, 2)))


def test_identity_warp_keeps_pixels() -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    warped = warp_affine(image, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], (40, 60))
    np.testing.assert_array_equal(warped, image)


def test_landmarks_land_on_the_template() -> None:
    # Bright dots at five "landmarks" of a rotated, scaled face must come out at the template.
    template = np.array([[47.3, 44.2], [99.8, 44.3], [73.9, 77.3], [49.2, 100.8], [97.1, 100.7]])
    to_image = _similarity(-0.4, 2.3, (220.0, 140.0))
    landmarks = template @ to_image[:, :2].T + to_image[:, 2]
    image = np.zeros((600, 600, 3), dtype=np.uint8)
    for x, y in np.round(landmarks).astype(int):
        image[y - 2 : y + 3, x - 2 : x + 3] = 255
    chip = align_face(image, landmarks, template=template, size=(150, 150))
    for x, y in template:
        window = chip[int(y) - 1 : int(y) + 3, int(x) - 1 : int(x) + 3, 0]
        assert window.max() > 200, (x, y)


def test_reproduces_dlibs_chips(astronaut: np.ndarray, dlib_tools: dict[str, object]) -> None:
    """With dlib's own image-to-chip transform our warp cuts exactly dlib's chip."""
    import dlib

    from training.derive_template import dlib_chip_transform

    detector, predictor = dlib_tools["detector"], dlib_tools["predictor"]
    face = detector(astronaut, 1)[0]  # type: ignore[operator]
    shape = predictor(astronaut, face)  # type: ignore[operator]
    details = dlib.get_face_chip_details(shape, size=150, padding=0.25)
    ours = warp_affine(astronaut, dlib_chip_transform(details), (150, 150))
    theirs = dlib_chips(dlib_tools, astronaut)[0]
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_large_faces_are_reduced_before_the_warp() -> None:
    # A fine checkerboard shrunk 8x: point sampling would alias into a strong pattern, the
    # reduced image averages it to mid-grey as a smooth resize does.
    checker = ((np.indices((1200, 1200)).sum(axis=0) % 2) * 255).astype(np.uint8)
    image = np.repeat(checker[:, :, np.newaxis], 3, axis=2)
    template = np.array([[50.0, 50.0], [100.0, 50.0], [75.0, 100.0]])
    landmarks = template * 8
    chip = align_face(image, landmarks, template=template, size=(150, 150))
    assert abs(float(chip.mean()) - 127.5) < 3 and float(chip.std()) < 10
    # The reduced image and its matrix map landmarks to the same chip points.
    matrix = estimate_similarity(landmarks, template)
    reduced, reduced_matrix = reduce_for_warp(image, matrix)
    assert reduced.shape[0] == 1200 // 4
    factor = 4
    reduced_points = (landmarks - (factor - 1) / 2) / factor
    np.testing.assert_allclose(
        reduced_points @ reduced_matrix[:, :2].T + reduced_matrix[:, 2], template, atol=1e-9
    )
