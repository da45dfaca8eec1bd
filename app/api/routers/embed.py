"""``POST /embed``: every face of one or several photos, with embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Request

from app.api.deps import EngineDep, MetricsDep, SettingsDep, admit, require_api_key
from app.api.errors import NotReadyError, UnauthorizedError, error_responses
from app.api.schemas import EmbeddedFace, EmbeddedImage, EmbedOptions, EmbedResponse, ModelRef
from app.api.uploads import (
    MULTIPART,
    body_limit,
    field_errors,
    media_type,
    read_form,
    split_form,
    validate_fields,
)
from app.pipeline.errors import (
    ImageTooLargeError,
    InvalidImageError,
    OverloadedError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)

router = APIRouter(prefix="/embed", tags=["embed"], dependencies=[Depends(require_api_key)])

SINGLE: Final = "image"
SEVERAL: Final = "images"


@dataclass(frozen=True)
class EmbedInput:
    names: list[str]  # "image", or "images[0]", "images[1]", ... in the order sent
    images: list[bytes]
    options: EmbedOptions


async def read_embed_input(request: Request, settings: SettingsDep) -> EmbedInput:
    """The photos and the options from a multipart body."""
    media_type(request, accepted=(MULTIPART,))
    most = settings.max_embed_images
    limit = body_limit(images=most, max_image_bytes=settings.max_image_bytes, encoding=MULTIPART)
    form = await read_form(request, limit=limit, max_files=most, max_fields=8)
    try:
        files, fields = split_form(form)
        errors = [
            ("extra_forbidden", name, "Send the photos as 'image' (one) or 'images' (several).")
            for name in files
            if name not in (SINGLE, SEVERAL)
        ]
        errors += [
            ("value_error", name, f"{name} must be a file part, not a field.")
            for name in (SINGLE, SEVERAL)
            if name in fields
        ]
        if SINGLE in files and SEVERAL in files:
            errors.append(("value_error", SINGLE, "Send either 'image' or 'images', not both."))
        elif SINGLE in files and len(files[SINGLE]) > 1:
            errors.append(("value_error", SINGLE, "'image' takes one file; use 'images' for more."))
        elif not errors and SINGLE not in files and SEVERAL not in files:
            errors.append(("missing", SINGLE, "Field required: send 'image' or 'images'."))
        if errors:
            raise field_errors(errors)
        options = validate_fields(EmbedOptions, fields)
        if SINGLE in files:
            names, uploads = [SINGLE], files[SINGLE]
        else:
            uploads = files[SEVERAL]
            names = [f"{SEVERAL}[{index}]" for index in range(len(uploads))]
        images = [await upload.read() for upload in uploads]
    finally:
        await form.close()
    return EmbedInput(names=names, images=images, options=options)


_EMBED_BODY: Final = {
    "requestBody": {
        "required": True,
        "description": "One photo as `image`, or several as repeated `images` parts.",
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {
                        SINGLE: {
                            "type": "string",
                            "format": "binary",
                            "description": "One photo (JPEG, PNG, WebP, BMP, GIF or TIFF).",
                        },
                        SEVERAL: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Several photos, instead of `image`.",
                        },
                        **EmbedOptions.model_json_schema()["properties"],
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=EmbedResponse,
    dependencies=[Depends(admit)],
    openapi_extra=_EMBED_BODY,
    responses=error_responses(
        InvalidImageError,
        UnauthorizedError,
        ImageTooLargeError,
        UnsupportedMediaTypeError,
        OverloadedError,
        NotReadyError,
        RequestTimeoutError,
        validation=True,
    ),
)
def embed(
    engine: EngineDep,
    metrics: MetricsDep,
    inputs: Annotated[EmbedInput, Depends(read_embed_input)],
) -> EmbedResponse:
    """Faces of each photo, largest first, with box, landmarks, score and embedding."""
    outcome = engine.embed(
        inputs.images,
        names=inputs.names,
        detect=inputs.options.detect,
        max_faces=inputs.options.max_faces,
    )
    for faces in outcome.faces:
        metrics.faces_per_image.observe(len(faces))
    return EmbedResponse(
        model=ModelRef.of(engine.metadata),
        images=[
            EmbeddedImage(image=name, faces=[EmbeddedFace.of(face) for face in faces])
            for name, faces in zip(inputs.names, outcome.faces, strict=True)
        ],
        timings_ms=outcome.timings.as_dict(),
    )
