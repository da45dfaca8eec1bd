"""The inference engine the service calls: the pipeline behind two micro-batchers, with deadlines.

Request threads decode and align on their own (that work is per image and releases the GIL in
Pillow), while detection and embedding go through ``MicroBatcher`` queues so that concurrent
requests share MTCNN and model calls. Each call has a deadline; past it the caller's queued work is
cancelled and ``RequestTimeoutError`` raised. Face policies for verification:

- ``largest``: the largest face of each image;
- ``strict``: each image must hold exactly one face, else ``MultipleFacesError``;
- ``best``: the closest pair among all faces of the two images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.pipeline.batching import BatchStats, MicroBatcher
from app.pipeline.compare import Verdict, decide, euclidean_distance, pairwise_distances
from app.pipeline.detect import Face
from app.pipeline.errors import (
    InputError,
    MultipleFacesError,
    NoFaceError,
    OverloadedError,
    RequestTimeoutError,
)
from app.pipeline.metadata import ModelMetadata
from app.pipeline.pipeline import FacePipeline

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]
FacePolicy = Literal["largest", "strict", "best"]
In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    request_timeout_s: float = 30.0


@dataclass(frozen=True)
class FoundFace:
    """A face and its embedding; without detection the face is the whole (resized) image."""

    box: tuple[float, float, float, float]  # x, y, width, height in the decoded image
    landmarks: FloatArray | None  # [5, 2], None without detection
    score: float | None  # None without detection
    embedding: FloatArray


@dataclass
class Timings:
    """Milliseconds spent per stage, for one request."""

    decode: float = 0.0
    detect: float = 0.0
    align: float = 0.0
    embed: float = 0.0
    compare: float = 0.0
    total: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 2) for name, value in vars(self).items()}


@dataclass(frozen=True)
class VerifyOutcome:
    verdict: Verdict
    face_a: FoundFace
    face_b: FoundFace
    timings: Timings


@dataclass(frozen=True)
class EmbedOutcome:
    faces: list[list[FoundFace]]  # per image, largest first
    timings: Timings = field(default_factory=Timings)


class InferenceEngine:
    """Thread-safe entry point for requests; owns the batchers' worker threads."""

    def __init__(
        self,
        pipeline: FacePipeline,
        config: EngineConfig | None = None,
        *,
        on_batch: Callable[[str, BatchStats], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.config = config if config is not None else EngineConfig()

        def report(name: str) -> Callable[[BatchStats], None] | None:
            if on_batch is None:
                return None
            return lambda stats: on_batch(name, stats)

        self._detector: MicroBatcher[ImageArray, list[Face]] = MicroBatcher(
            pipeline.detect,
            name="detect",
            max_batch_size=self.config.max_batch_size,
            max_wait=self.config.max_wait_ms / 1000,
            max_queue=self.config.max_queue,
            on_batch=report("detect"),
        )
        self._embedder: MicroBatcher[ImageArray, FloatArray] = MicroBatcher(
            self._embed_chips,
            name="embed",
            max_batch_size=self.config.max_batch_size,
            max_wait=self.config.max_wait_ms / 1000,
            max_queue=self.config.max_queue,
            on_batch=report("embed"),
        )

    @property
    def metadata(self) -> ModelMetadata:
        return self.pipeline.metadata

    @property
    def queue_depth(self) -> int:
        return self._detector.queue_depth + self._embedder.queue_depth

    def close(self) -> None:
        self._detector.close()
        self._embedder.close()

    def embed(
        self,
        images: Sequence[bytes],
        *,
        names: Sequence[str],
        detect: bool = True,
        max_faces: int | None = None,
    ) -> EmbedOutcome:
        """Faces and embeddings of each image (an image without a face gives an empty list)."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.config.request_timeout_s
        timings = Timings()
        faces = self._faces(images, names, detect, max_faces, deadline, timings)
        timings.total = (time.perf_counter() - started) * 1000
        return EmbedOutcome(faces=faces, timings=timings)

    def verify(
        self,
        image_a: bytes,
        image_b: bytes,
        *,
        threshold: float | None = None,
        face_policy: FacePolicy = "largest",
        detect: bool = True,
    ) -> VerifyOutcome:
        """Whether the two images show the same person, by ``face_policy``."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.config.request_timeout_s
        timings = Timings()
        names = ("image_a", "image_b")
        max_faces = 1 if face_policy == "largest" else None
        faces_a, faces_b = self._faces(
            [image_a, image_b], names, detect, max_faces, deadline, timings
        )
        for name, faces in zip(names, (faces_a, faces_b), strict=True):
            if not faces:
                raise NoFaceError(f"No face was found in {name}.", image=name)
            if face_policy == "strict" and len(faces) > 1:
                raise MultipleFacesError(
                    f"{name} holds {len(faces)} faces; face_policy strict needs exactly one.",
                    count=len(faces),
                    image=name,
                )
        compare_started = time.perf_counter()
        if face_policy == "best":
            distances = pairwise_distances(
                [face.embedding for face in faces_a], [face.embedding for face in faces_b]
            )
            index_a, index_b = np.unravel_index(int(np.argmin(distances)), distances.shape)
            face_a, face_b = faces_a[int(index_a)], faces_b[int(index_b)]
        else:
            face_a, face_b = faces_a[0], faces_b[0]
        verdict = decide(
            euclidean_distance(face_a.embedding, face_b.embedding),
            threshold=self.metadata.threshold if threshold is None else threshold,
            platt=self.pipeline.platt,
        )
        timings.compare = (time.perf_counter() - compare_started) * 1000
        timings.total = (time.perf_counter() - started) * 1000
        return VerifyOutcome(verdict=verdict, face_a=face_a, face_b=face_b, timings=timings)

    def compare(
        self, embedding_a: npt.ArrayLike, embedding_b: npt.ArrayLike, *, threshold: float | None
    ) -> Verdict:
        """The verdict for two embeddings, without images."""
        size = self.metadata.embedding_size
        for name, embedding in (("embedding_a", embedding_a), ("embedding_b", embedding_b)):
            if np.shape(embedding) != (size,):
                raise ValueError(f"{name} must hold {size} numbers, got {np.shape(embedding)}.")
        return self.pipeline.compare(embedding_a, embedding_b, threshold=threshold)

    def _faces(
        self,
        images: Sequence[bytes],
        names: Sequence[str],
        detect: bool,
        max_faces: int | None,
        deadline: float,
        timings: Timings,
    ) -> list[list[FoundFace]]:
        mark = time.perf_counter()
        decoded = []
        for name, data in zip(names, images, strict=True):
            try:
                decoded.append(self.pipeline.decode(data).pixels)
            except InputError as error:
                raise error.for_image(name) from None
        timings.decode = _since(mark)

        mark = time.perf_counter()
        if detect:
            detections = [
                faces[:max_faces] for faces in self._wait(self._detector, decoded, deadline)
            ]
        else:
            detections = [[] for _ in decoded]
        timings.detect = _since(mark)

        mark = time.perf_counter()
        chips: list[ImageArray] = []
        for image, faces in zip(decoded, detections, strict=True):
            if detect:
                chips.extend(self.pipeline.align(image, faces))
            else:
                chips.append(self._as_chip(image))
        timings.align = _since(mark)

        mark = time.perf_counter()
        embeddings = self._wait(self._embedder, chips, deadline)
        timings.embed = _since(mark)

        results: list[list[FoundFace]] = []
        offset = 0
        for image, faces in zip(decoded, detections, strict=True):
            if not detect:
                rows, cols = image.shape[:2]
                results.append(
                    [
                        FoundFace(
                            (0.0, 0.0, float(cols), float(rows)), None, None, embeddings[offset]
                        )
                    ]
                )
                offset += 1
                continue
            found = [
                FoundFace(face.box, face.landmarks, face.score, embeddings[offset + index])
                for index, face in enumerate(faces)
            ]
            results.append(found)
            offset += len(faces)
        return results

    def _as_chip(self, image: ImageArray) -> ImageArray:
        rows, cols = self.pipeline.chip_size
        if image.shape[:2] == (rows, cols):
            return image
        resized = Image.fromarray(image).resize((cols, rows), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)

    def _embed_chips(self, chips: Sequence[ImageArray]) -> list[FloatArray]:
        return list(self.pipeline.embed_chips(np.stack(chips)))

    @staticmethod
    def _wait(batcher: MicroBatcher[In, Out], items: Sequence[In], deadline: float) -> list[Out]:
        futures: list[Future[Out]] = []
        try:
            for item in items:
                futures.append(batcher.submit(item))
        except OverloadedError:
            # Whatever of this request was queued would be wasted work now.
            for future in futures:
                future.cancel()
            raise
        try:
            return [
                future.result(timeout=max(0.0, deadline - time.monotonic())) for future in futures
            ]
        except TimeoutError:
            for future in futures:
                future.cancel()
            raise RequestTimeoutError(
                "The request took longer than the service allows; retry, or send smaller images."
            ) from None


def _since(mark: float) -> float:
    return (time.perf_counter() - mark) * 1000
