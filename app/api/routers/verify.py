"""``POST /verify`` (two photos) and ``POST /verify/embeddings`` (two embeddings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request

from app.api.deps import EngineDep, SettingsDep, admit, require_api_key
from app.api.errors import (
    NotReadyError,
    UnauthorizedError,
    error_responses,
)
from app.api.schemas import (
    DetectedFace,
    EmbeddingsVerifyRequest,
    EmbeddingsVerifyResponse,
    VerdictResponse,
    VerifyFaces,
    VerifyJsonRequest,
    VerifyOptions,
    VerifyResponse,
)
from app.api.uploads import (
    JSON,
    MULTIPART,
    body_limit,
    decode_base64,
    field_errors,
    media_type,
    read_form,
    read_json,
    split_form,
    validate_fields,
)
from app.pipeline.errors import (
    ImageTooLargeError,
    InvalidImageError,
    MultipleFacesError,
    NoFaceError,
    OverloadedError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from app.settings import Settings

router = APIRouter(prefix="/verify", tags=["verify"], dependencies=[Depends(require_api_key)])

IMAGE_NAMES: Final = ("image_a", "image_b")
# Small next to any image; bounds what a client can make the service parse as JSON.
_EMBEDDINGS_BODY_LIMIT: Final = 256 * 1024


@dataclass(frozen=True)
class VerifyInput:
    image_a: bytes
    image_b: bytes
    options: VerifyOptions


async def read_verify_input(request: Request, settings: SettingsDep) -> VerifyInput:
    """The two images and the options, from a JSON or a multipart body."""
    media = media_type(request, accepted=(MULTIPART, JSON))
    limit = body_limit(images=2, max_image_bytes=settings.max_image_bytes, encoding=media)
    if media == JSON:
        payload = await read_json(request, VerifyJsonRequest, limit=limit)
        images = [decode_base64(getattr(payload, name), image=name) for name in IMAGE_NAMES]
        options = VerifyOptions.model_validate(payload.model_dump(exclude=set(IMAGE_NAMES)))
        return VerifyInput(images[0], images[1], options)

    form = await read_form(request, limit=limit, max_files=len(IMAGE_NAMES), max_fields=8)
    try:
        files, fields = split_form(form)
        errors: list[tuple[str, str, str]] = []
        for name in IMAGE_NAMES:
            if name in fields:
                errors.append(("value_error", name, f"{name} must be a file part, not a field."))
            elif name not in files:
                errors.append(("missing", name, "Field required"))
        errors += [
            ("extra_forbidden", name, "Only image_a and image_b can be files.")
            for name in files
            if name not in IMAGE_NAMES
        ]
        if errors:
            raise field_errors(errors)
        options = validate_fields(VerifyOptions, fields)
        image_a, image_b = [await files[name][0].read() for name in IMAGE_NAMES]
    finally:
        await form.close()
    return VerifyInput(image_a, image_b, options)


VerifyInputDep = Annotated[VerifyInput, Depends(read_verify_input)]


def _multipart_schema() -> dict[str, Any]:
    options = VerifyOptions.model_json_schema()
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    return {
        "type": "object",
        "required": list(IMAGE_NAMES),
        "properties": {
            "image_a": {**binary, "description": "The first photo."},
            "image_b": {**binary, "description": "The second photo."},
            **options["properties"],
        },
    }


_VERIFY_BODY: Final = {
    "requestBody": {
        "required": True,
        "description": (
            "Two photos (JPEG, PNG, WebP, BMP, GIF or TIFF), as multipart file parts or as base64 "
            "strings in JSON, with the same optional fields either way."
        ),
        "content": {
            MULTIPART: {"schema": _multipart_schema()},
            JSON: {
                "schema": VerifyJsonRequest.model_json_schema(),
                "example": {
                    "image_a": "/9j/4AAQSkZJRgABAQAAAQABAAD...",
                    "image_b": "/9j/4AAQSkZJRgABAQEASABIAAD...",
                    "threshold": 0.6,
                    "face_policy": "largest",
                    "detect": True,
                },
            },
        },
    }
}


@router.post(
    "",
    response_model=VerifyResponse,
    dependencies=[Depends(admit)],
    openapi_extra=_VERIFY_BODY,
    responses=error_responses(
        InvalidImageError,
        UnauthorizedError,
        ImageTooLargeError,
        UnsupportedMediaTypeError,
        NoFaceError,
        MultipleFacesError,
        OverloadedError,
        NotReadyError,
        RequestTimeoutError,
        validation=True,
    ),
)
def verify(engine: EngineDep, settings: SettingsDep, inputs: VerifyInputDep) -> VerifyResponse:
    """Whether two photos show the same person, with the faces compared and the timings."""
    options = inputs.options
    outcome = engine.verify(
        inputs.image_a,
        inputs.image_b,
        threshold=_threshold(options.threshold, settings),
        face_policy=options.face_policy,
        detect=options.detect,
    )
    return VerifyResponse(
        **VerdictResponse.verdict_fields(outcome.verdict, engine.metadata),
        faces=VerifyFaces(
            image_a=DetectedFace.of(outcome.face_a), image_b=DetectedFace.of(outcome.face_b)
        ),
        timings_ms=outcome.timings.as_dict(),
    )


async def read_embeddings_request(
    request: Request,
) -> EmbeddingsVerifyRequest:
    """The JSON body of /verify/embeddings, read under a small size limit."""
    media_type(request, accepted=(JSON,))
    return await read_json(request, EmbeddingsVerifyRequest, limit=_EMBEDDINGS_BODY_LIMIT)


@router.post(
    "/embeddings",
    response_model=EmbeddingsVerifyResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": EmbeddingsVerifyRequest.model_json_schema()}},
        }
    },
    responses=error_responses(
        UnauthorizedError,
        ImageTooLargeError,
        UnsupportedMediaTypeError,
        NotReadyError,
        validation=True,
    ),
)
def verify_embeddings(
    engine: EngineDep,
    settings: SettingsDep,
    body: Annotated[EmbeddingsVerifyRequest, Depends(read_embeddings_request)],
) -> EmbeddingsVerifyResponse:
    """Whether two embeddings (from /embed, same model) show the same person."""
    size = engine.metadata.embedding_size
    errors = [
        ("embedding_length", name, f"{name} must hold {size} numbers (the model's embedding_size).")
        for name in ("embedding_a", "embedding_b")
        if len(getattr(body, name)) != size
    ]
    if errors:
        raise field_errors(errors)
    verdict = engine.compare(
        body.embedding_a, body.embedding_b, threshold=_threshold(body.threshold, settings)
    )
    return EmbeddingsVerifyResponse(**VerdictResponse.verdict_fields(verdict, engine.metadata))


def _threshold(requested: float | None, settings: Settings) -> float | None:
    """The request's threshold, else the operator's; None leaves the model's calibrated one."""
    return requested if requested is not None else settings.threshold
