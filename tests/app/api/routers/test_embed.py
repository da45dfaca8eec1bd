"""/embed with a fake engine: one image or several, options, and field errors."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.app.api.conftest import AppFactory
from tests.app.api.fakes import EMBEDDING_SIZE, FakeEngine, jpeg


def test_one_image_gives_a_list_of_one(client: TestClient, engine: FakeEngine) -> None:
    image = jpeg()
    response = client.post("/embed", files={"image": ("a.jpg", image)})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "fake_model", "version": 3}
    (entry,) = body["images"]
    assert entry["image"] == "image"
    (found,) = entry["faces"]
    assert len(found["embedding"]) == EMBEDDING_SIZE
    assert found["box"]["width"] == 20.0 and found["score"] == pytest.approx(0.99)
    assert set(found["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    assert body["timings_ms"]["total"] == 5.0
    assert engine.calls[0][1] == {
        "images": [image],
        "names": ["image"],
        "detect": True,
        "max_faces": 10,
    }


def test_several_images_in_order_an_empty_one_included(
    client: TestClient, engine: FakeEngine
) -> None:
    engine.faces_per_image = 3
    files = [
        ("images", ("a.jpg", jpeg())),
        ("images", ("b.jpg", b"no face")),
        ("images", ("c.jpg", jpeg(color=(0, 0, 0)))),
    ]
    response = client.post("/embed", files=files, data={"max_faces": "2", "detect": "true"})
    assert response.status_code == 200
    images = response.json()["images"]
    assert [entry["image"] for entry in images] == ["images[0]", "images[1]", "images[2]"]
    assert [len(entry["faces"]) for entry in images] == [2, 0, 2]
    assert engine.calls[0][1]["max_faces"] == 2
    assert engine.calls[0][1]["names"] == ["images[0]", "images[1]", "images[2]"]


@pytest.mark.parametrize(
    ("files", "data", "message"),
    [
        (
            [("image", ("a.jpg", b"1")), ("images", ("b.jpg", b"2"))],
            {},
            "Send either 'image' or 'images', not both.",
        ),
        (
            [("image", ("a.jpg", b"1")), ("image", ("b.jpg", b"2"))],
            {},
            "'image' takes one file; use 'images' for more.",
        ),
        (
            [("photo", ("a.jpg", b"1"))],
            {},
            "Send the photos as 'image' (one) or 'images' (several).",
        ),
    ],
)
def test_file_field_errors(
    client: TestClient, files: list[object], data: dict[str, str], message: str
) -> None:
    response = client.post("/embed", files=files, data=data)
    assert response.status_code == 422
    assert message in [error["msg"] for error in response.json()["detail"]]


def test_no_image(client: TestClient) -> None:
    # httpx sends multipart only with a file part, so this body is written by hand.
    body = b'--b\r\nContent-Disposition: form-data; name="max_faces"\r\n\r\n3\r\n--b--\r\n'
    response = client.post(
        "/embed", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "missing",
            "loc": ["body", "image"],
            "msg": "Field required: send 'image' or 'images'.",
        }
    ]


def test_option_errors(client: TestClient) -> None:
    response = client.post("/embed", files={"image": ("a.jpg", b"1")}, data={"max_faces": "0"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "max_faces"]


def test_too_many_images(make_app: AppFactory) -> None:
    client = TestClient(make_app(max_embed_images=2))
    files = [("images", (f"{index}.jpg", b"x")) for index in range(3)]
    response = client.post("/embed", files=files)
    assert response.status_code == 422
    assert "Too many files" in response.json()["detail"][0]["msg"]


def test_json_is_refused(client: TestClient) -> None:
    response = client.post("/embed", json={"image": "AAAA"})
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
