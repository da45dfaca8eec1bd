"""A fake engine and request helpers for the API tests: the real HTTP layer, no model."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from app.pipeline.compare import PlattScaling, Verdict, decide, euclidean_distance
from app.pipeline.engine import EmbedOutcome, FoundFace, Timings, VerifyOutcome
from app.pipeline.metadata import ModelMetadata, Provenance

EMBEDDING_SIZE = 128

METADATA = ModelMetadata(
    name="fake_model",
    version=3,
    input_size=(150, 150),
    embedding_size=EMBEDDING_SIZE,
    threshold=0.6,
    threshold_source="a test",
    provenance=Provenance(
        source="tests",
        converter="tests.app.api.conftest",
        converter_version="1",
        created_at="2026-01-01T00:00:00+00:00",
    ),
)


def face(x: float = 10.0, *, value: float = 0.0) -> FoundFace:
    landmarks = np.array([[x + 5, 20], [x + 15, 20], [x + 10, 25], [x + 6, 30], [x + 14, 30]])
    return FoundFace(
        box=(x, 12.345678, 20.0, 24.0),
        landmarks=landmarks.astype(np.float32),
        score=0.99,
        embedding=np.full(EMBEDDING_SIZE, value, dtype=np.float32),
    )


@dataclass
class FakeEngine:
    """Stands in for ``InferenceEngine``: records calls, answers or raises as told."""

    error: BaseException | None = None
    delay_s: float = 0.0
    platt: PlattScaling | None = None
    faces_per_image: int = 1
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    queue_depth: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    metadata = METADATA

    def _enter(self, name: str, **arguments: Any) -> None:
        with self._lock:
            self.calls.append((name, arguments))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error

    def verify(
        self,
        image_a: bytes,
        image_b: bytes,
        *,
        threshold: float | None = None,
        face_policy: str = "largest",
        detect: bool = True,
    ) -> VerifyOutcome:
        self._enter(
            "verify",
            image_a=image_a,
            image_b=image_b,
            threshold=threshold,
            face_policy=face_policy,
            detect=detect,
        )
        face_a, face_b = face(10.0, value=0.0), face(30.0, value=0.02)
        return VerifyOutcome(
            verdict=self._decide(face_a.embedding, face_b.embedding, threshold),
            face_a=face_a,
            face_b=face_b,
            timings=Timings(decode=1.0, detect=2.0, align=0.5, embed=3.0, compare=0.1, total=7.0),
        )

    def embed(
        self,
        images: Sequence[bytes],
        *,
        names: Sequence[str],
        detect: bool = True,
        max_faces: int | None = None,
    ) -> EmbedOutcome:
        self._enter(
            "embed", images=list(images), names=list(names), detect=detect, max_faces=max_faces
        )
        count = min(self.faces_per_image, max_faces or self.faces_per_image)
        # An image whose bytes say so holds no face, to show empty lists.
        faces = [
            [] if data == b"no face" else [face(10.0 * index) for index in range(count)]
            for data in images
        ]
        return EmbedOutcome(faces=faces, timings=Timings(total=5.0))

    def compare(self, embedding_a: Any, embedding_b: Any, *, threshold: float | None) -> Verdict:
        self._enter(
            "compare", embedding_a=embedding_a, embedding_b=embedding_b, threshold=threshold
        )
        return self._decide(embedding_a, embedding_b, threshold)

    def _decide(self, first: Any, second: Any, threshold: float | None) -> Verdict:
        return decide(
            euclidean_distance(first, second),
            threshold=METADATA.threshold if threshold is None else threshold,
            platt=self.platt,
        )


def jpeg(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 120, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def pair(
    image_a: bytes | None = None, image_b: bytes | None = None
) -> dict[str, tuple[str, bytes]]:
    """The ``files`` of a multipart /verify request."""
    return {
        "image_a": ("a.jpg", image_a if image_a is not None else jpeg()),
        "image_b": ("b.jpg", image_b if image_b is not None else jpeg(color=(10, 20, 30))),
    }
