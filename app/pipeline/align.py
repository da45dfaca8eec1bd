"""Align a face to the model's five-point template with a similarity transform.

The transform (rotation, uniform scale, translation) is the least-squares fit of the detected
landmarks onto the template (Umeyama's method, reflections excluded). Coordinates follow dlib's
convention, pixel centres on integers, so that chips match the ones dlib's ``get_face_chip`` cuts;
Pillow puts pixel centres at +0.5, which ``warp_affine`` corrects for.

When a face shrinks by more than half on its way into the chip, bilinear sampling alone would alias
(phone photos hold faces of 1,000 px for a 150 px chip). dlib then samples from a pyramid level of
the image, and so do we: the image is first reduced by a power of two with a box filter, so that the
warp never shrinks by more than half. Our chips equal dlib's exactly wherever the warp shrinks by
less than half; below that both are smooth, but their filters differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

FloatArray = npt.NDArray[np.float64]
ImageArray = npt.NDArray[np.uint8]


def estimate_similarity(source: npt.ArrayLike, target: npt.ArrayLike) -> FloatArray:
    """The 2x3 similarity matrix M minimising sum |M [x, y, 1] - target|^2 over the points.

    With centred points s_i, t_i (means removed), covariance C = sum t_i s_i^T / n and its SVD
    C = U D V^T, the rotation is R = U S V^T (S flips the last axis if det(U V^T) < 0), the scale is
    trace(D S) / var(s), and the translation is mean(t) - scale * R mean(s).
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(
            f"Need two matching [N, 2] point sets with N >= 2, got {src.shape} and {dst.shape}."
        )
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    variance = float((src_centred**2).sum() / len(src))
    if variance <= 1e-12:
        raise ValueError("The source points coincide; a similarity transform is undefined.")
    covariance = dst_centred.T @ src_centred / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign)) / variance
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, np.newaxis]])


def warp_affine(image: ImageArray, matrix: npt.ArrayLike, size: tuple[int, int]) -> ImageArray:
    """Warps an RGB image with the 2x3 ``matrix`` (image -> output) into ``size`` (rows, cols).

    Bilinear sampling; pixels outside the image are black, as in dlib's chips.
    """
    forward = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    # Pillow maps output pixel centres (u + 0.5) and samples input pixel centres at +0.5; in the
    # integer-centre convention that is x_in = A (u - 0.5) + t + 0.5.
    linear, offset = inverse[:2, :2], inverse[:2, 2]
    offset = offset + 0.5 - linear @ np.array([0.5, 0.5])
    coefficients = (
        linear[0, 0],
        linear[0, 1],
        offset[0],
        linear[1, 0],
        linear[1, 1],
        offset[1],
    )
    rows, cols = size
    warped = Image.fromarray(image).transform(
        (cols, rows),
        Image.Transform.AFFINE,
        data=tuple(float(value) for value in coefficients),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.asarray(warped, dtype=np.uint8)


def reduce_for_warp(image: ImageArray, matrix: npt.ArrayLike) -> tuple[ImageArray, FloatArray]:
    """Shrinks ``image`` by a power of two f so that ``matrix`` (image -> chip) scales by >= 1/2.

    Returns the reduced image and the matrix that maps it to the same chip. A reduced pixel x'
    covers original pixels f x' .. f x' + f - 1, so x = f x' + (f - 1) / 2 with integer centres.
    """
    forward = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(forward[:, :2]))))
    factor = 1
    while scale * factor < 0.5 and min(image.shape[:2]) >= 4 * factor:
        factor *= 2
    if factor == 1:
        return image, forward
    reduced = np.asarray(Image.fromarray(image).reduce(factor), dtype=np.uint8)
    linear = forward[:, :2] * factor
    offset = forward[:, 2] + forward[:, :2] @ np.full(2, (factor - 1) / 2)
    return reduced, np.hstack([linear, offset[:, np.newaxis]])


def align_face(
    image: ImageArray,
    landmarks: npt.ArrayLike,
    *,
    template: Sequence[Sequence[float]] | npt.ArrayLike,
    size: tuple[int, int],
) -> ImageArray:
    """Cuts the chip ``size`` (rows, cols) whose template points the face's landmarks land on."""
    source, matrix = reduce_for_warp(image, estimate_similarity(landmarks, template))
    return warp_affine(source, matrix, size)
