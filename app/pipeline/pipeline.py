"""The inference path, decode -> detect -> align -> embed -> compare, configured from metadata.json.

``FacePipeline`` holds the loaded detector and embedding model and is shared by the service and the
training package's evaluation. Every step takes a batch so callers can group work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.pipeline.align import align_face
from app.pipeline.compare import PlattScaling, Verdict, decide, euclidean_distance
from app.pipeline.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodedImage, decode_image
from app.pipeline.detect import DetectorConfig, Face, FaceDetector
from app.pipeline.embed import Embedder, flip_averaged
from app.pipeline.errors import InputError, MetadataError, NoFaceError
from app.pipeline.metadata import ModelMetadata

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class FaceEmbedding:
    """A detected face and its embedding."""

    face: Face
    embedding: FloatArray


@dataclass(frozen=True)
class PipelineConfig:
    """Run-time choices; model-specific ones (template, input size) come from metadata.json."""

    detector: DetectorConfig = DetectorConfig()
    # None follows the model's metadata (alignment.flip_augmentation), which its calibration used.
    flip_augmentation: bool | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_size: int = 64


class FacePipeline:
    """Decode, detect, align and embed faces; compare embeddings."""

    def __init__(
        self,
        *,
        embedder: Embedder,
        detector: FaceDetector,
        config: PipelineConfig | None = None,
    ) -> None:
        self.embedder = embedder
        self.detector = detector
        self.config = config if config is not None else PipelineConfig()
        alignment = embedder.metadata.alignment
        if alignment is None:
            raise MetadataError(
                f"{embedder.model_dir}/metadata.json has no alignment template; rebuild the model "
                "(`make model`) or export it with one."
            )
        self._template = np.asarray(alignment.template, dtype=np.float64)
        self.flip_augmentation = (
            alignment.flip_augmentation
            if self.config.flip_augmentation is None
            else self.config.flip_augmentation
        )
        calibration = embedder.metadata.calibration or {}
        platt = calibration.get("platt")
        self.platt = PlattScaling(a=platt["a"], b=platt["b"]) if platt else None

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, *, config: PipelineConfig | None = None
    ) -> FacePipeline:
        config = config if config is not None else PipelineConfig()
        embedder = Embedder(model_dir, max_batch_size=config.max_batch_size)
        return cls(embedder=embedder, detector=FaceDetector(config.detector), config=config)

    @property
    def metadata(self) -> ModelMetadata:
        return self.embedder.metadata

    @property
    def chip_size(self) -> tuple[int, int]:
        return self.metadata.input_size

    def decode(self, data: bytes) -> DecodedImage:
        return decode_image(
            data, max_bytes=self.config.max_bytes, max_pixels=self.config.max_pixels
        )

    def detect(self, images: Sequence[ImageArray]) -> list[list[Face]]:
        """Faces per image, largest first."""
        return self.detector.detect(images)

    def align(self, image: ImageArray, faces: Sequence[Face]) -> ImageArray:
        """Chips ``[len(faces), rows, cols, 3]`` cut from ``image``."""
        rows, cols = self.chip_size
        if not faces:
            return np.zeros((0, rows, cols, 3), dtype=np.uint8)
        return np.stack(
            [
                align_face(image, face.landmarks, template=self._template, size=(rows, cols))
                for face in faces
            ]
        )

    def embed_chips(self, chips: npt.ArrayLike) -> FloatArray:
        """Embeddings of aligned chips; with flip augmentation, the mean of chip and mirror."""
        batch = np.asarray(chips)
        if not self.flip_augmentation or len(batch) == 0:
            return self.embedder.embed(batch)
        return flip_averaged(self.embedder.embed, batch)

    def embed_faces(
        self, images: Sequence[ImageArray], *, max_faces: int | None = None
    ) -> list[list[FaceEmbedding]]:
        """Detects, aligns and embeds up to ``max_faces`` faces per image, largest first.

        Detection runs as one batch over all images and embedding as one batch over all faces.
        """
        detections = [faces[:max_faces] for faces in self.detect(images)]
        chips = [self.align(image, faces) for image, faces in zip(images, detections, strict=True)]
        rows, cols = self.chip_size
        all_chips = np.concatenate([np.zeros((0, rows, cols, 3), np.uint8), *chips])
        embeddings = self.embed_chips(all_chips)
        results: list[list[FaceEmbedding]] = []
        offset = 0
        for faces in detections:
            results.append(
                [
                    FaceEmbedding(face=face, embedding=embeddings[offset + index])
                    for index, face in enumerate(faces)
                ]
            )
            offset += len(faces)
        return results

    def embed_largest(
        self, images: Sequence[bytes], *, names: Sequence[str] | None = None
    ) -> list[FloatArray | None]:
        """For each encoded image, the embedding of its largest face; None when it has no face.

        Raises ``InputError`` labelled with the image's name (default: its index) when an image
        cannot be decoded.
        """
        labels = list(names) if names is not None else [str(index) for index in range(len(images))]
        decoded: list[ImageArray] = []
        for label, data in zip(labels, images, strict=True):
            try:
                decoded.append(self.decode(data).pixels)
            except InputError as error:
                raise error.for_image(label) from None
        return [
            faces[0].embedding if faces else None
            for faces in self.embed_faces(decoded, max_faces=1)
        ]

    def compare(
        self, first: npt.ArrayLike, second: npt.ArrayLike, *, threshold: float | None = None
    ) -> Verdict:
        """The verdict for two embeddings, at the model's threshold unless one is given."""
        return decide(
            euclidean_distance(first, second),
            threshold=self.metadata.threshold if threshold is None else threshold,
            platt=self.platt,
        )

    def verify(self, image_a: bytes, image_b: bytes) -> Verdict:
        """Whether the largest faces of two encoded images show the same person."""
        names = ("image_a", "image_b")
        first, second = self.embed_largest([image_a, image_b], names=names)
        if first is None:
            raise NoFaceError("No face was found in image_a.", image="image_a")
        if second is None:
            raise NoFaceError("No face was found in image_b.", image="image_b")
        return self.compare(first, second)
