"""Reading request bodies under a size limit: JSON with base64 images, or multipart uploads.

The image routes parse their bodies here rather than through FastAPI's ``File``/``Body``
parameters. /verify takes JSON *or* multipart, which one parameter list cannot say; and a body over
the limit must be refused with this service's own 413 (``payload_too_large``) body: before it is
read when its ``Content-Length`` says so, and as soon as it passes the limit when it streams without
one. Malformed bodies and invalid fields raise ``RequestValidationError``, so clients see FastAPI's
usual 422 shape.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Final, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.pipeline.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

JSON: Final = "application/json"
MULTIPART: Final = "multipart/form-data"
# Room for multipart boundaries and part headers, JSON keys and the option fields.
_BODY_SLACK: Final = 64 * 1024
# Non-file form fields are a few bytes each (a threshold, a policy name).
_MAX_FIELD_BYTES: Final = 1024
_MIB: Final = 1024 * 1024

Model = TypeVar("Model", bound=BaseModel)


def body_limit(*, images: int, max_image_bytes: int, encoding: str) -> int:
    """The largest body that can hold ``images`` images of ``max_image_bytes`` each.

    Multipart sends the bytes as they are. Base64 (JSON) takes 4 characters per 3 bytes, plus a
    line break (CR LF) every 76 characters when the encoder wraps lines as MIME does.
    """
    if encoding != JSON:
        return images * max_image_bytes + _BODY_SLACK
    characters = 4 * math.ceil(max_image_bytes / 3)
    return images * (characters + 2 * math.ceil(characters / 76)) + _BODY_SLACK


def media_type(request: Request, *, accepted: Sequence[str]) -> str:
    """The request's media type (``Content-Type`` without parameters), if it is accepted."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in accepted:
        raise UnsupportedMediaTypeError(
            f"The request body must be {' or '.join(accepted)}, "
            + (f"not {media}." if media else "and the request has no Content-Type.")
        )
    return media


async def _limited_stream(request: Request, *, limit: int) -> AsyncGenerator[bytes, None]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        yield chunk


def _too_large(limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"The request body is larger than this endpoint accepts ({limit / _MIB:.3g} MiB); "
        "send fewer or smaller images."
    )


async def read_json(request: Request, model: type[Model], *, limit: int) -> Model:
    """Reads at most ``limit`` bytes and validates them as ``model``."""
    chunks = [chunk async for chunk in _limited_stream(request, limit=limit)]
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as error:
        raise validation_error(error) from None


async def read_form(request: Request, *, limit: int, max_files: int, max_fields: int) -> FormData:
    """Reads a multipart body of at most ``limit`` bytes; the caller closes the returned form."""
    parser = MultiPartParser(
        request.headers,
        _limited_stream(request, limit=limit),
        max_files=max_files,
        max_fields=max_fields,
        max_part_size=_MAX_FIELD_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise RequestValidationError(
            [
                {
                    "type": "multipart_invalid",
                    "loc": ("body",),
                    "msg": f"The multipart body cannot be parsed: {error.message}",
                }
            ]
        ) from None


def split_form(form: FormData) -> tuple[dict[str, list[UploadFile]], dict[str, str]]:
    """The form's file parts by name (in order), and its text fields (the last of each name)."""
    files: dict[str, list[UploadFile]] = {}
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(name, []).append(value)
        else:
            fields[name] = value
    return files, fields


def validate_fields(model: type[Model], fields: Mapping[str, str]) -> Model:
    """Form fields as ``model``; an empty field counts as not sent."""
    try:
        return model.model_validate({name: value for name, value in fields.items() if value})
    except ValidationError as error:
        raise validation_error(error) from None


def validation_error(error: ValidationError) -> RequestValidationError:
    """Pydantic's errors located in the body, as FastAPI reports them.

    The offending input is left out: it may be a whole base64 image.
    """
    return RequestValidationError(
        [
            {**item, "loc": ("body", *item["loc"])}
            for item in error.errors(include_url=False, include_input=False)
        ]
    )


def field_errors(errors: Sequence[tuple[str, str, str]]) -> RequestValidationError:
    """``(type, field, message)`` triples as a FastAPI validation error on the body."""
    return RequestValidationError(
        [{"type": kind, "loc": ("body", field), "msg": message} for kind, field, message in errors]
    )


def decode_base64(value: str, *, image: str) -> bytes:
    """The bytes of a base64 image; a ``data:...;base64,`` prefix and line breaks are allowed.

    Its size is checked by the decoder, like an uploaded file's.
    """
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    # MIME encoders wrap lines; removing whitespace first lets validate=True refuse everything else.
    text = "".join(value.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(
            f"{image} is not valid base64; send the image file's bytes in standard base64.",
            image=image,
        ) from None
