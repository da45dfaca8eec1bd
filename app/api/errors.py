"""Domain errors -> HTTP responses, and the two errors only the HTTP layer raises.

The service's errors extend the domain's tree (``app.pipeline.errors``)::

    FaceVerifyError
    ├── ... the pipeline's errors (InputError and its kinds, OverloadedError, RequestTimeoutError)
    ├── UnauthorizedError   unauthorized: no API key, or a wrong one (401)
    └── NotReadyError       not_ready: the model is not loaded and warmed up yet (503)

Every handled error answers ``{"detail": sentence, "code": stable_code, "image": name | null}``.
Request validation keeps FastAPI's own 422 handler and shape. Anything else is left to Starlette,
whose 500 response carries no detail.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from app.api.schemas import ErrorResponse, ValidationErrorResponse
from app.pipeline.errors import (
    FaceVerifyError,
    ImageTooLargeError,
    InputError,
    InvalidImageError,
    MultipleFacesError,
    NoFaceError,
    OverloadedError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)

logger = logging.getLogger(__name__)

# How long an overloaded client should wait before retrying, in seconds: about the time a few
# batches take on the CPU, so a retry meets a queue that has had time to drain.
RETRY_AFTER_SECONDS: Final = 1


class UnauthorizedError(FaceVerifyError):
    code = "unauthorized"


class NotReadyError(FaceVerifyError):
    code = "not_ready"


# Looked up along the exception's class hierarchy, most specific first.
STATUS_BY_ERROR: Final[dict[type[FaceVerifyError], int]] = {
    InvalidImageError: status.HTTP_400_BAD_REQUEST,
    UnsupportedMediaTypeError: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    ImageTooLargeError: status.HTTP_413_CONTENT_TOO_LARGE,
    NoFaceError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    MultipleFacesError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InputError: status.HTTP_400_BAD_REQUEST,
    UnauthorizedError: status.HTTP_401_UNAUTHORIZED,
    OverloadedError: status.HTTP_429_TOO_MANY_REQUESTS,
    NotReadyError: status.HTTP_503_SERVICE_UNAVAILABLE,
    RequestTimeoutError: status.HTTP_504_GATEWAY_TIMEOUT,
}

_HEADERS_BY_ERROR: Final[dict[type[FaceVerifyError], dict[str, str]]] = {
    UnauthorizedError: {"WWW-Authenticate": "Bearer"},
    OverloadedError: {"Retry-After": str(RETRY_AFTER_SECONDS)},
}


# Statuses that say something is wrong with the service rather than the request are warnings.
# 429 is not among them: under a flood it would be thousands of lines, and the request metrics
# already count it.
_WARN_STATUSES: Final = frozenset(
    {status.HTTP_503_SERVICE_UNAVAILABLE, status.HTTP_504_GATEWAY_TIMEOUT}
)


def status_of(error: FaceVerifyError) -> int:
    """The HTTP status of a domain error, by its most specific class that has one."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    raise LookupError(f"{type(error).__name__} has no HTTP status.")


async def _domain_error_handler(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, FaceVerifyError):  # registered only for FaceVerifyError subclasses
        raise error
    status_code = status_of(error)
    image = error.image if isinstance(error, InputError) else None
    # The code and the image's name only: never the image, a key, or an embedding.
    level = logging.WARNING if status_code in _WARN_STATUSES else logging.INFO
    logger.log(
        level,
        "%s %s -> %d %s%s",
        request.method,
        request.url.path,
        status_code,
        error.code,
        f" ({image})" if image else "",
    )
    headers: dict[str, str] = {}
    for cls in type(error).__mro__:
        headers.update(_HEADERS_BY_ERROR.get(cls, {}))
    body = ErrorResponse(detail=error.detail, code=error.code, image=image)
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def register_error_handlers(app: FastAPI) -> None:
    """Maps every domain error with an HTTP status to its response."""
    for error_class in STATUS_BY_ERROR:
        app.add_exception_handler(error_class, _domain_error_handler)


def error_responses(
    *errors: type[FaceVerifyError], validation: bool = False
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a route can answer, with an example of each code.

    ``validation`` adds FastAPI's 422 shape, which shares its status with no_face and
    multiple_faces.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for error_class in errors:
        example = ERROR_EXAMPLES[error_class.code]
        entry = responses.setdefault(STATUS_BY_ERROR[error_class], _response_entry())
        entry["description"] = " ".join(filter(None, [entry["description"], example["summary"]]))
        entry["content"]["application/json"]["examples"][error_class.code] = example
        if error_class in _HEADERS_BY_ERROR:
            entry["headers"] = {
                name: {"description": _HEADER_DOCS[name], "schema": {"type": "string"}}
                for name in _HEADERS_BY_ERROR[error_class]
            }
    if validation:
        status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
        entry = responses.setdefault(status_code, _response_entry(ValidationErrorResponse))
        if entry["model"] is ErrorResponse:
            entry["model"] = ErrorResponse | ValidationErrorResponse
        entry["description"] = " ".join(
            filter(None, [entry["description"], _VALIDATION_EXAMPLE["summary"]])
        )
        entry["content"]["application/json"]["examples"]["validation"] = _VALIDATION_EXAMPLE
    return responses


def _response_entry(model: Any = ErrorResponse) -> dict[str, Any]:
    return {"model": model, "description": "", "content": {"application/json": {"examples": {}}}}


_VALIDATION_EXAMPLE: Final[dict[str, Any]] = {
    "summary": "The body does not match its schema (FastAPI's shape: a list of errors).",
    "value": {"detail": [{"type": "missing", "loc": ["body", "image_b"], "msg": "Field required"}]},
}


_HEADER_DOCS: Final = {
    "WWW-Authenticate": "`Bearer`: send an API key as a bearer token or in `X-API-Key`.",
    "Retry-After": "Seconds to wait before retrying.",
}


def _example(summary: str, detail: str, code: str, image: str | None = None) -> dict[str, Any]:
    return {"summary": summary, "value": {"detail": detail, "code": code, "image": image}}


ERROR_EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "invalid_image": _example(
        "An image cannot be decoded, or is not valid base64.",
        "The data is not an image in a format we can read. Send a JPEG, PNG, WebP, BMP, GIF or "
        "TIFF image.",
        "invalid_image",
        "image_b",
    ),
    "unsupported_media_type": _example(
        "The request body, or an image, is in a format the service does not accept.",
        "HEIC images are not supported. Send a JPEG, PNG, WebP, BMP, GIF or TIFF image.",
        "unsupported_media_type",
        "image_a",
    ),
    "payload_too_large": _example(
        "An image, or the whole request, is larger than the limits allow.",
        "The image is larger than the limit of 10 MiB.",
        "payload_too_large",
        "image_a",
    ),
    "no_face": _example(
        "No face was found in an image (or none large or sure enough).",
        "No face was found in image_b.",
        "no_face",
        "image_b",
    ),
    "multiple_faces": _example(
        "face_policy strict, and an image holds more than one face.",
        "image_a holds 3 faces; face_policy strict needs exactly one.",
        "multiple_faces",
        "image_a",
    ),
    "unauthorized": _example(
        "API keys are configured and the request has none, or a wrong one.",
        "A valid API key is required: send it in the X-API-Key header or as "
        "'Authorization: Bearer <key>'.",
        "unauthorized",
    ),
    "overloaded": _example(
        "The work queue is full; retry after the Retry-After seconds.",
        "The service is at capacity; retry after a short wait.",
        "overloaded",
    ),
    "not_ready": _example(
        "The model is not loaded and warmed up yet.",
        "The model is still loading; retry shortly.",
        "not_ready",
    ),
    "timeout": _example(
        "The request took longer than the service allows.",
        "The request took longer than the service allows; retry, or send smaller images.",
        "timeout",
    ),
}
