"""Helpers shared by tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def dlib_chips(tools: dict[str, object], image: npt.NDArray[np.uint8]) -> list[np.ndarray]:
    """150x150 chips cut by dlib's own pipeline, one per face its HOG detector finds."""
    detector, predictor, get_face_chip = (
        tools["detector"],
        tools["predictor"],
        tools["get_face_chip"],
    )
    faces = detector(image, 1)  # type: ignore[operator]
    return [
        np.asarray(get_face_chip(image, predictor(image, face), size=150, padding=0.25))  # type: ignore[operator]
        for face in faces
    ]
