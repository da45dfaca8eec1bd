"""Derive the five-point alignment template that makes MTCNN chips match dlib's own chips.

dlib's pipeline (HOG detector, 5-point shape predictor, ``get_face_chip(size=150, padding=0.25)``)
defines the chips the dlib ResNet descriptor was trained on. For each photo where dlib and MTCNN
find the same single face, dlib's chip transform (image -> chip) is applied to MTCNN's five
landmarks; the template is the mean of those points in the 150 x 150 chip frame. Then, on photos
of *other* identities, each face is cut both ways and compared: pixel difference between the chips
and Euclidean distance between the embeddings of our chip and of dlib's chip.

    python -m training derive-template --images ../shared/data/celeba/img_celeba_wild \
        --identities ../shared/data/celeba/identity_CelebA.txt

Needs dlib (the dev group's dlib-bin). The result goes into ``training/import_dlib.py``'s
``ALIGNMENT`` and from there into the model's metadata.json.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from app.pipeline.align import align_face, estimate_similarity, warp_affine
from app.pipeline.decode import decode_image
from app.pipeline.detect import LANDMARK_NAMES, Face, FaceDetector
from training.import_dlib import packaged_model_file
from training.pairs import read_identity_file, split_by_identity

logger = logging.getLogger(__name__)

CHIP_SIZE = 150
CHIP_PADDING = 0.25


@dataclass(frozen=True)
class Match:
    """One face found by both pipelines: dlib's chip, its transform, and MTCNN's face."""

    path: Path
    image: npt.NDArray[np.uint8]
    dlib_chip: npt.NDArray[np.uint8]
    to_chip: npt.NDArray[np.float64]  # 2x3, image -> dlib chip
    face: Face


def dlib_chip_transform(details: Any) -> npt.NDArray[np.float64]:
    """The image -> chip similarity of a ``dlib.chip_details``.

    dlib maps the chip's corners onto the rectangle's corners rotated by +angle about its centre;
    this reproduces ``dlib.get_face_chip`` exactly (checked in the tests).
    """
    rect = details.rect
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    cos, sin = np.cos(details.angle), np.sin(details.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    corners = np.array(
        [
            [rect.left(), rect.top()],
            [rect.right(), rect.top()],
            [rect.right(), rect.bottom()],
            [rect.left(), rect.bottom()],
        ]
    )
    rotated = (corners - centre) @ rotation.T + centre
    rows, cols = details.rows, details.cols
    chip_corners = np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1], [0, rows - 1]])
    return estimate_similarity(rotated, chip_corners)


def find_matches(
    paths: Sequence[Path], *, detector: FaceDetector, batch_size: int = 16
) -> Iterator[Match]:
    """Faces that dlib finds alone in a photo and MTCNN finds at the same place."""
    import dlib

    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(
        str(packaged_model_file("shape_predictor_5_face_landmarks.dat"))
    )
    for start in range(0, len(paths), batch_size):
        if start and start % (4 * batch_size) == 0:
            logger.info("Looked at %d of %d photos", start, len(paths))
        chunk = paths[start : start + batch_size]
        images = [decode_image(path.read_bytes()).pixels for path in chunk]
        detections = detector.detect(images)
        for path, image, faces in zip(chunk, images, detections, strict=True):
            found = hog(image, 1)
            if len(found) != 1 or not faces:
                continue
            rect = found[0]
            centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
            face = min(faces, key=lambda f: _distance_to_box_centre(f, centre))
            x, y, width, height = face.box
            if not (x <= centre[0] <= x + width and y <= centre[1] <= y + height):
                continue
            shape = predictor(image, rect)
            details = dlib.get_face_chip_details(shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            to_chip = dlib_chip_transform(details)
            dlib_chip = np.asarray(
                dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            )
            yield Match(path=path, image=image, dlib_chip=dlib_chip, to_chip=to_chip, face=face)


def _distance_to_box_centre(face: Face, centre: npt.NDArray[np.float64]) -> float:
    x, y, width, height = face.box
    return float(np.hypot(x + width / 2 - centre[0], y + height / 2 - centre[1]))


def derive_template(matches: Sequence[Match]) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    """Mean of MTCNN's landmarks mapped into dlib's chip frame, and the spread per point."""
    points = np.stack(
        [
            (match.to_chip[:, :2] @ match.face.landmarks.astype(np.float64).T).T
            + match.to_chip[:, 2]
            for match in matches
        ]
    )
    template = points.mean(axis=0)
    spread = np.sqrt(((points - template) ** 2).sum(axis=2).mean(axis=0))
    return template, {
        "faces": len(matches),
        "rms_spread_px": {
            name: round(float(value), 2) for name, value in zip(LANDMARK_NAMES, spread, strict=True)
        },
    }


def compare_chips(
    matches: Sequence[Match], *, template: npt.ArrayLike, model_dir: Path
) -> dict[str, Any]:
    """How close MTCNN + template chips come to dlib's chips, in pixels and in embeddings."""
    from app.pipeline.embed import Embedder

    embedder = Embedder(model_dir)
    ours = np.stack(
        [
            align_face(m.image, m.face.landmarks, template=template, size=(CHIP_SIZE, CHIP_SIZE))
            for m in matches
        ]
    )
    theirs = np.stack([m.dlib_chip for m in matches])
    # Our own warp with dlib's transform must reproduce dlib's chip: a check on the conventions.
    rewarped = np.stack([warp_affine(m.image, m.to_chip, (CHIP_SIZE, CHIP_SIZE)) for m in matches])
    distances = np.linalg.norm(embedder.embed(ours) - embedder.embed(theirs), axis=1)
    pixel_difference = np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).mean(axis=(1, 2, 3))
    return {
        "faces": len(matches),
        "mean_abs_pixel_difference": round(float(pixel_difference.mean()), 2),
        "embedding_distance_mean": round(float(distances.mean()), 4),
        "embedding_distance_median": round(float(np.median(distances)), 4),
        "embedding_distance_p95": round(float(np.percentile(distances, 95)), 4),
        "dlib_chip_reproduced_max_abs": int(
            np.abs(rewarped.astype(np.int16) - theirs.astype(np.int16)).max()
        ),
    }


def run_derivation(
    *,
    images_dir: Path,
    identity_file: Path,
    model_dir: Path,
    faces: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Derives the template on one half of the identities and checks it on the other half."""
    labels = read_identity_file(identity_file, images_dir=images_dir)
    if not labels:
        raise ValueError(f"No image of {identity_file} is in {images_dir}.")
    tuning, held_out = split_by_identity(labels, seed=seed)
    detector = FaceDetector()
    tuning_matches = _take(find_matches(sorted(tuning), detector=detector), faces)
    template, spread = derive_template(tuning_matches)
    check_matches = _take(find_matches(sorted(held_out), detector=detector), faces)
    check = compare_chips(check_matches, template=template, model_dir=model_dir)
    result = {
        "template": [[round(float(x), 2), round(float(y), 2)] for x, y in template],
        "landmarks": list(LANDMARK_NAMES),
        "derivation": {"split_seed": seed, **spread},
        "held_out_check": check,
    }
    logger.info("Template: %s", result["template"])
    logger.info("Spread: %s", spread)
    logger.info("Held-out check: %s", check)
    return result


def _take(matches: Iterator[Match], count: int) -> list[Match]:
    taken: list[Match] = []
    for match in matches:
        taken.append(match)
        if len(taken) == count:
            break
    return taken
