"""Detect faces and their five landmarks with MTCNN (the ``mtcnn`` package; weights ship inside).

Each image is first scaled down so its longer side is at most ``max_side`` (detection cost grows
with pixels, accuracy does not: see shared/notes/face-alignment.md); boxes and landmarks are mapped
back to the original image's pixels. Images of the same detection size go through one batched
MTCNN call; images of different sizes go through separate calls. mtcnn 1.0 can batch different
sizes by padding them to a shared canvas, but it misplaces boxes when it does (measured: 55 px off
for a cropped photo batched with a larger one), and even padding them ourselves changes its image
pyramid and so its detections: a face found alone was missed when batched with other photos. A
photo's faces must not depend on what else is in the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# MTCNN's P-Net looks at 12x12 windows: smaller images and faces cannot be found.
_MTCNN_WINDOW = 12
# Where MTCNN's image pyramid starts: the smallest face it looks for, in detection pixels. mtcnn 1.0
# counts its pyramid's levels as if it started at scale 1 but starts at 12 / min_face_size, so its
# last level shrinks to about 20 * 12 / min_face_size pixels: above about 21, that level is under
# P-Net's 12 pixels, TensorFlow raises, and mtcnn reports no face in any image of the batch. Below
# 20 it finds fewer faces, not more (measured on 12 hard photos: 11 found from 20, 8 from 16, 1
# from 12) and runs up to 4x slower. So it always starts at its default, 20, and the configured
# minimum face size is applied afterwards, in the photo's own pixels.
_PYRAMID_START = 20


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the decoded image.

    ``landmarks`` is [5, 2] (x, y) in ``LANDMARK_NAMES`` order; "left" means the image's left (the
    person's right eye), as MTCNN reports it.
    """

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: FloatArray
    score: float

    @property
    def size(self) -> float:
        """The longer side of the box, in pixels: what the minimum face size is compared with."""
        return max(self.box[2], self.box[3])

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


@dataclass(frozen=True)
class DetectorConfig:
    """Detection settings; the service fills them from its Settings."""

    max_side: int = 640
    min_face_size: int = 20
    # MTCNN's own last stage keeps faces scoring 0.8 or more; real faces score 0.8-0.9 too
    # (measured: 4 of 900 in-the-wild photos), so the default adds no stricter cut.
    min_score: float = 0.8
    device: str | None = None  # a TensorFlow device such as "GPU:0"; None picks GPU:0 if present

    def __post_init__(self) -> None:
        if self.max_side < 2 * _MTCNN_WINDOW:
            raise ValueError(f"max_side must be at least {2 * _MTCNN_WINDOW}, got {self.max_side}.")
        if self.min_face_size < 1:
            raise ValueError(f"min_face_size must be positive, got {self.min_face_size}.")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {self.min_score}.")


class FaceDetector:
    """MTCNN, loaded once; ``detect`` is safe to call from several threads."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config if config is not None else DetectorConfig()
        import tensorflow as tf
        from mtcnn import MTCNN

        device = self.config.device
        if device is None:
            device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
        self.device = device
        self._mtcnn = MTCNN(device=device)
        # mtcnn 1.0 calls its three Keras networks eagerly, layer by layer; compiled graphs are
        # 2.7x faster on the CPU (0.42 -> 0.16 s per 500x350 photo). reduce_retracing lets one
        # graph serve the pyramid's many image sizes. mtcnn is pinned, and its stages keep their
        # network in ``_model`` (mtcnn/stages/base.py).
        for stage in self._mtcnn.stages:
            stage._model = tf.function(stage._model, reduce_retracing=True)
        logger.info("MTCNN face detector on %s", device)

    def detect(self, images: Sequence[ImageArray]) -> list[list[Face]]:
        """Faces in each RGB image ``[H, W, 3]``, largest first, filtered by size and score.

        Images of the same detection size go through MTCNN together (see the module docstring).
        """
        results: list[list[Face]] = [[] for _ in images]
        scales = [min(1.0, self.config.max_side / max(image.shape[:2])) for image in images]
        scaled_sizes = [
            (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
            for image, scale in zip(images, scales, strict=True)
        ]
        buckets: dict[tuple[int, int], list[int]] = {}
        for index, (rows, cols) in enumerate(scaled_sizes):
            # Images too small to hold one MTCNN window, or the smallest face, hold no face.
            if min(rows, cols) < _MTCNN_WINDOW or min(images[index].shape[:2]) < (
                self.config.min_face_size
            ):
                continue
            buckets.setdefault((rows, cols), []).append(index)
        for (rows, cols), members in buckets.items():
            batch = np.stack([_resize(images[index], rows, cols) for index in members])
            for row in self._run(batch):
                index = members[int(row[0])]
                face = _to_face(row, 1.0 / scales[index])
                if face.score >= self.config.min_score and face.size >= self.config.min_face_size:
                    results[index].append(face)
        for faces in results:
            faces.sort(key=lambda face: face.area, reverse=True)
        return results

    def _run(self, batch: ImageArray) -> npt.NDArray[Any]:
        output = self._mtcnn.detect_faces(
            list(batch), output_type="numpy", box_format="xywh", min_face_size=_PYRAMID_START
        )
        return np.asarray(output, dtype=np.float64).reshape(-1, 16)


def _resize(image: ImageArray, rows: int, cols: int) -> ImageArray:
    if image.shape[:2] == (rows, cols):
        return image
    # Pillow's resize filters over the whole source footprint when shrinking (no aliasing).
    resized = Image.fromarray(image).resize((cols, rows), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _to_face(row: npt.NDArray[Any], factor: float) -> Face:
    # mtcnn's numpy rows: image index, x, y, width, height, score, five x's, then five y's.
    x, y, width, height, score = (float(value) for value in row[1:6])
    landmarks = np.stack([row[6:11], row[11:16]], axis=1) * factor
    return Face(
        box=(x * factor, y * factor, width * factor, height * factor),
        landmarks=landmarks.astype(np.float32),
        score=score,
    )
