"""Request and response bodies, named by role; their descriptions and examples make up ``/docs``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.pipeline.compare import Verdict
from app.pipeline.detect import LANDMARK_NAMES
from app.pipeline.engine import FacePolicy, FoundFace
from app.pipeline.metadata import ModelMetadata

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Point = tuple[float, float]

_TIMINGS_EXAMPLE = {
    "decode": 4.1,
    "detect": 151.3,
    "align": 2.2,
    "embed": 48.9,
    "compare": 0.05,
    "total": 207.1,
}


class _Request(BaseModel):
    # A misspelt option ("treshold") is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


# --- errors and health ---------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """Every error except request validation (422 in FastAPI's own shape)."""

    detail: str = Field(
        description="What went wrong and what to do, in one sentence.",
        examples=["No face was found in image_b."],
    )
    code: str = Field(
        description=(
            "Stable identifier: invalid_image, unsupported_media_type, payload_too_large, "
            "no_face, multiple_faces, unauthorized, overloaded, not_ready or timeout."
        ),
        examples=["no_face"],
    )
    image: str | None = Field(
        default=None,
        description=(
            "Which input failed (`image_a`, `image_b`; on /embed `image` or `images[i]`), or "
            "null when the error is not about one image."
        ),
        examples=["image_b"],
    )


class ValidationErrorItem(BaseModel):
    type: str = Field(description="Pydantic's error type.", examples=["missing"])
    loc: list[str | int] = Field(
        description="Where: `body` then the field.", examples=[["body", "image_b"]]
    )
    msg: str = Field(examples=["Field required"])


class ValidationErrorResponse(BaseModel):
    """A request that does not match its schema: FastAPI's own 422 shape."""

    detail: list[ValidationErrorItem]


class HealthResponse(BaseModel):
    status: Literal["ok"] = Field(description="`ok` when the probe passes.", examples=["ok"])


# --- requests ------------------------------------------------------------------------------------


class VerifyOptions(_Request):
    """The options of /verify, as JSON fields or as multipart form fields."""

    threshold: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Distances at or below this mean the same person. Unset: the service's threshold "
            "(the model's calibrated one unless the operator set another)."
        ),
        examples=[0.6],
    )
    face_policy: FacePolicy = Field(
        default="largest",
        description=(
            "`largest`: the largest face of each image; `strict`: 422 multiple_faces when an image "
            "holds more than one face; `best`: the closest pair among all faces of both images."
        ),
        examples=["largest"],
    )
    detect: bool = Field(
        default=True,
        description="False when the images already are aligned face crops: no detection.",
        examples=[True],
    )


class VerifyJsonRequest(VerifyOptions):
    """/verify as JSON: both images base64-encoded."""

    image_a: str = Field(
        description="The first image file (JPEG, PNG, WebP, BMP, GIF or TIFF), base64-encoded.",
        examples=["/9j/4AAQSkZJRgABAQAAAQABAAD..."],
    )
    image_b: str = Field(
        description="The second image file, base64-encoded.",
        examples=["iVBORw0KGgoAAAANSUhEUgAA..."],
    )


class EmbeddingsVerifyRequest(_Request):
    """Two embeddings, as /embed returns them, to compare without images."""

    embedding_a: list[FiniteFloat] = Field(
        min_length=1,
        max_length=4096,
        description="The first embedding: as many numbers as the model's embedding_size (/model).",
        examples=[[0.0123, -0.0871, 0.1402]],
    )
    embedding_b: list[FiniteFloat] = Field(
        min_length=1,
        max_length=4096,
        description="The second embedding, from the same model.",
        examples=[[0.0201, -0.0712, 0.1388]],
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Distances at or below this mean the same person; unset: the service's.",
        examples=[0.6],
    )


class EmbedOptions(_Request):
    """The form fields of /embed."""

    max_faces: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Most faces returned per image, largest first.",
        examples=[10],
    )
    detect: bool = Field(
        default=True,
        description="False when the images already are aligned face crops: one face per image.",
        examples=[True],
    )


# --- responses -----------------------------------------------------------------------------------


class Box(BaseModel):
    """A face's bounding box in the pixels of the decoded (EXIF-rotated) image."""

    x: float = Field(description="Left edge.", examples=[171.9])
    y: float = Field(description="Top edge.", examples=[61.6])
    width: float = Field(examples=[85.6])
    height: float = Field(examples=[110.9])


class Landmarks(BaseModel):
    """Five points, (x, y) in the image's pixels; left means the image's left."""

    left_eye: Point = Field(examples=[[196.2, 104.5]])
    right_eye: Point = Field(examples=[[236.8, 101.3]])
    nose: Point = Field(examples=[[218.4, 126.0]])
    mouth_left: Point = Field(examples=[[201.5, 146.7]])
    mouth_right: Point = Field(examples=[[235.0, 144.1]])


class DetectedFace(BaseModel):
    """Where a face is. Without detection (`detect` false) the box is the whole image."""

    box: Box
    landmarks: Landmarks | None = Field(description="Null without detection.")
    score: float | None = Field(
        description="The detector's confidence, 0 to 1; null without detection.", examples=[0.9997]
    )

    @classmethod
    def of(cls, face: FoundFace) -> DetectedFace:
        return cls(**_face_fields(face))


class EmbeddedFace(DetectedFace):
    embedding: list[float] = Field(
        description="The face's embedding; compare two with /verify/embeddings.",
        examples=[[0.0123, -0.0871, 0.1402]],
    )

    @classmethod
    def of(cls, face: FoundFace) -> EmbeddedFace:
        return cls(**_face_fields(face), embedding=face.embedding.tolist())


def _face_fields(face: FoundFace) -> dict[str, Any]:
    # Hundredths of a pixel are finer than any detector's precision; more digits are noise.
    x, y, width, height = (round(float(value), 2) for value in face.box)
    landmarks = None
    if face.landmarks is not None:
        landmarks = Landmarks(
            **{
                name: (round(float(point[0]), 2), round(float(point[1]), 2))
                for name, point in zip(LANDMARK_NAMES, face.landmarks, strict=True)
            }
        )
    return {
        "box": Box(x=x, y=y, width=width, height=height),
        "landmarks": landmarks,
        "score": face.score,
    }


class ModelRef(BaseModel):
    name: str = Field(examples=["dlib_resnet_v1"])
    version: int = Field(examples=[1])

    @classmethod
    def of(cls, metadata: ModelMetadata) -> ModelRef:
        return cls(name=metadata.name, version=metadata.version)


class VerdictResponse(BaseModel):
    """Whether two faces show the same person."""

    verified: bool = Field(
        description="True when the distance is at or below the threshold.", examples=[True]
    )
    distance: float = Field(
        description="Euclidean distance between the two embeddings.", examples=[0.3127]
    )
    threshold: float = Field(description="The threshold this answer used.", examples=[0.6])
    confidence: float | None = Field(
        description=(
            "The calibrated probability that both show the same person; null when the model has "
            "no calibration."
        ),
        examples=[0.982],
    )
    model: ModelRef

    @classmethod
    def verdict_fields(cls, verdict: Verdict, metadata: ModelMetadata) -> dict[str, Any]:
        return {
            "verified": verdict.same,
            "distance": verdict.distance,
            "threshold": verdict.threshold,
            "confidence": verdict.confidence,
            "model": ModelRef.of(metadata),
        }


class EmbeddingsVerifyResponse(VerdictResponse):
    """/verify/embeddings: the verdict alone."""


class VerifyFaces(BaseModel):
    image_a: DetectedFace
    image_b: DetectedFace


class VerifyResponse(VerdictResponse):
    """/verify: the verdict, the faces it compared, and where the time went."""

    faces: VerifyFaces = Field(description="The face compared in each image.")
    timings_ms: dict[str, float] = Field(
        description="Milliseconds per stage: decode, detect, align, embed, compare, total.",
        examples=[_TIMINGS_EXAMPLE],
    )


class EmbeddedImage(BaseModel):
    image: str = Field(
        description="Which upload: `image`, or `images[i]` in the order sent.",
        examples=["images[0]"],
    )
    faces: list[EmbeddedFace] = Field(
        description="Faces found, largest first; empty when the image holds none."
    )


class EmbedResponse(BaseModel):
    """/embed: the faces of each image, with embeddings."""

    model: ModelRef
    images: list[EmbeddedImage] = Field(description="One entry per uploaded image, in order.")
    timings_ms: dict[str, float] = Field(
        description="Milliseconds per stage for the whole request.",
        examples=[_TIMINGS_EXAMPLE],
    )
