"""The domain's exceptions, in one module. The service maps them to HTTP responses.

    FaceVerifyError                 base; ``code`` is a stable snake_case identifier
    ├── InputError                  something is wrong with one uploaded image
    │   ├── InvalidImageError       invalid_image: not decodable, truncated, empty, too small
    │   ├── UnsupportedMediaTypeError  unsupported_media_type: a format we do not accept
    │   ├── ImageTooLargeError      payload_too_large: too many bytes or too many pixels
    │   ├── NoFaceError             no_face: no face found (or none large or sure enough)
    │   └── MultipleFacesError      multiple_faces: more than one face where one was required
    ├── OverloadedError             overloaded: the work queue is full; retry shortly
    ├── RequestTimeoutError         timeout: the request took longer than allowed
    └── ModelError                  the model cannot be used; raised at start-up
        ├── MetadataError           model_metadata: metadata.json missing or invalid
        └── ModelLoadError          model_load: no loadable SavedModel

``InputError`` carries ``image``: which input failed (``"image_a"``, ``"image_b"``, or ``None`` when
the caller did not name it), so a response can say which of two uploads was wrong. Messages are
sentences meant for the client: they never contain image data or internal exception text.
"""

from __future__ import annotations


class FaceVerifyError(Exception):
    """Base of every domain error."""

    code = "face_verify_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InputError(FaceVerifyError):
    """An uploaded image cannot be used; ``image`` names which one when known."""

    code = "invalid_input"

    def __init__(self, detail: str, *, image: str | None = None) -> None:
        super().__init__(detail)
        self.image = image

    def for_image(self, image: str) -> InputError:
        """Returns this error labelled with the input it came from (e.g. ``"image_a"``)."""
        self.image = image
        return self


class InvalidImageError(InputError):
    code = "invalid_image"


class UnsupportedMediaTypeError(InputError):
    code = "unsupported_media_type"


class ImageTooLargeError(InputError):
    code = "payload_too_large"


class NoFaceError(InputError):
    code = "no_face"


class MultipleFacesError(InputError):
    code = "multiple_faces"

    def __init__(self, detail: str, *, count: int, image: str | None = None) -> None:
        super().__init__(detail, image=image)
        self.count = count


class OverloadedError(FaceVerifyError):
    code = "overloaded"


class RequestTimeoutError(FaceVerifyError):
    code = "timeout"


class ModelError(FaceVerifyError):
    code = "model_error"


class MetadataError(ModelError, ValueError):
    code = "model_metadata"


class ModelLoadError(ModelError, RuntimeError):
    code = "model_load"
