"""Detect faces and their five landmarks with MTCNN (the ``mtcnn`` package; weights ship inside).

Several images go through one batched MTCNN call. Each image is first scaled down so its longer
side is at most ``max_side`` (detection cost grows with pixels, accuracy does not: see
shared/notes/face-alignment.md) and copied into the top-left corner of a shared canvas; boxes and
landmarks are mapped back to the original image's pixels. We lay out the canvas ourselves because
mtcnn 1.0's own batching of differently sized images misplaces boxes (measured: a cropped copy of a
photo got a box 55 px off when batched with a larger image, and the right one alone).
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
# mtcnn 1.0 counts its pyramid's levels as if it started at scale 1, but starts at
# 12 / min_face_size, so its last level shrinks to about 20 * 12 / min_face_size pixels. Above about
# 21 the last level is under P-Net's 12 pixels, TensorFlow raises, and mtcnn reports *no face in any
# image of the batch*. We keep its value at or below 20 and apply our own minimum size afterwards.
_MTCNN_MAX_MIN_FACE_SIZE = 20
# Images whose detection sizes round up to the same multiple of this share one MTCNN call.
_BUCKET = 64


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
    min_score: float = 0.9
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

        Images go through MTCNN together when their detection sizes fall in the same bucket, so
        that padding to a shared canvas stays small (a 300 px photo padded to 640 x 640 costs as
        much as a 640 px one).
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
            key = (-(-rows // _BUCKET) * _BUCKET, -(-cols // _BUCKET) * _BUCKET)
            buckets.setdefault(key, []).append(index)
        for members in buckets.values():
            canvas_rows = max(scaled_sizes[index][0] for index in members)
            canvas_cols = max(scaled_sizes[index][1] for index in members)
            canvas = np.zeros((len(members), canvas_rows, canvas_cols, 3), dtype=np.uint8)
            for slot, index in enumerate(members):
                rows, cols = scaled_sizes[index]
                canvas[slot, :rows, :cols] = _resize(images[index], rows, cols)
            for row in self._run(canvas):
                index = members[int(row[0])]
                face = _to_face(row, 1.0 / scales[index])
                if face.score >= self.config.min_score and face.size >= self.config.min_face_size:
                    results[index].append(face)
        for faces in results:
            faces.sort(key=lambda face: face.area, reverse=True)
        return results

    def _run(self, canvas: ImageArray) -> npt.NDArray[Any]:
        # Where MTCNN's pyramid starts: the smallest face it looks for, in canvas pixels. Starting
        # lower multiplies the proposals the later stages must check (measured: 4x slower from 12
        # than from 20 on 640 px photos), and a face under 20 px in a downscaled photo is too
        # small to align well anyway, so the configured minimum counts in canvas pixels here and
        # in the photo's own pixels in the filter afterwards.
        pyramid_start = int(
            np.clip(self.config.min_face_size, _MTCNN_WINDOW, _MTCNN_MAX_MIN_FACE_SIZE)
        )
        batch = [canvas[slot] for slot in range(canvas.shape[0])]
        output = self._mtcnn.detect_faces(
            batch, output_type="numpy", box_format="xywh", min_face_size=pyramid_start
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
