"""Every domain error the engine raises becomes its status, code, image name and headers."""

from __future__ import annotations

import base64
import logging

import pytest
from fastapi.testclient import TestClient

from app.api.errors import STATUS_BY_ERROR, error_responses
from app.main import create_app
from app.pipeline.errors import (
    FaceVerifyError,
    ImageTooLargeError,
    InputError,
    InvalidImageError,
    ModelError,
    MultipleFacesError,
    NoFaceError,
    OverloadedError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from app.settings import Settings
from tests.app.api.conftest import AppFactory
from tests.app.api.fakes import FakeEngine, jpeg, pair


@pytest.mark.parametrize(
    ("error", "status", "image", "headers"),
    [
        (InvalidImageError("The image is empty.", image="image_a"), 400, "image_a", {}),
        (
            UnsupportedMediaTypeError("HEIC images are not supported.", image="image_b"),
            415,
            "image_b",
            {},
        ),
        (
            ImageTooLargeError("The image is larger than the limit of 10 MiB.", image="image_a"),
            413,
            "image_a",
            {},
        ),
        (NoFaceError("No face was found in image_b.", image="image_b"), 422, "image_b", {}),
        (
            MultipleFacesError("image_a holds 2 faces.", count=2, image="image_a"),
            422,
            "image_a",
            {},
        ),
        (OverloadedError("The service is at capacity."), 429, None, {"retry-after": "1"}),
        (RequestTimeoutError("The request took too long."), 504, None, {}),
    ],
)
def test_engine_errors_on_verify(
    client: TestClient,
    engine: FakeEngine,
    error: FaceVerifyError,
    status: int,
    image: str | None,
    headers: dict[str, str],
) -> None:
    engine.error = error
    response = client.post("/verify", files=pair())
    assert response.status_code == status
    assert response.json() == {"detail": error.detail, "code": error.code, "image": image}
    for name, value in headers.items():
        assert response.headers[name] == value


def test_errors_on_embed_name_the_upload(client: TestClient, engine: FakeEngine) -> None:
    engine.error = InvalidImageError("The image is empty.", image="images[1]")
    response = client.post(
        "/embed", files=[("images", ("a.jpg", jpeg())), ("images", ("b.jpg", b""))]
    )
    assert response.status_code == 400
    assert response.json()["image"] == "images[1]"


def test_not_ready_until_the_engine_exists(default_settings: Settings) -> None:
    client = TestClient(create_app(default_settings))  # no lifespan: no engine
    for method, path in [("GET", "/health/ready"), ("GET", "/model"), ("POST", "/verify")]:
        response = client.request(method, path, files=pair() if method == "POST" else None)
        assert response.status_code == 503, path
        assert response.json() == {
            "detail": "The model is still loading; retry shortly.",
            "code": "not_ready",
            "image": None,
        }
    assert client.get("/health/live").status_code == 200


def test_unexpected_errors_are_a_bare_500(make_app: AppFactory, engine: FakeEngine) -> None:
    engine.error = RuntimeError("secret internal state at /srv/model")
    client = TestClient(make_app(), raise_server_exceptions=False)
    response = client.post("/verify", files=pair())
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    # A model error reaching a request (it should not) is not mapped either: no internal text.
    engine.error = ModelError("/srv/models/x holds no loadable SavedModel")
    response = client.post("/verify", files=pair())
    assert response.status_code == 500 and "/srv" not in response.text


def test_every_mapped_error_is_documented() -> None:
    # InputError is the fallback for kinds of input error added later; each kind has its example.
    documented = error_responses(
        *(error for error in STATUS_BY_ERROR if error is not InputError), validation=True
    )
    assert set(documented) == {400, 401, 413, 415, 422, 429, 503, 504}
    examples = documented[422]["content"]["application/json"]["examples"]
    assert set(examples) == {"no_face", "multiple_faces", "validation"}
    assert documented[429]["headers"].keys() == {"Retry-After"}
    assert documented[401]["headers"].keys() == {"WWW-Authenticate"}


def test_keys_and_images_are_never_logged(
    make_app: AppFactory, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = TestClient(make_app(api_keys="sesame-key"))
    image = base64.b64encode(jpeg()).decode()
    client.post("/verify", json={"image_a": image, "image_b": "###"}, headers={"X-API-Key": "x"})
    client.post(
        "/verify", json={"image_a": image, "image_b": "###"}, headers={"X-API-Key": "sesame-key"}
    )
    assert "POST /verify -> 401 unauthorized" in caplog.text
    assert "POST /verify -> 400 invalid_image (image_b)" in caplog.text
    assert "sesame" not in caplog.text and image[:40] not in caplog.text
