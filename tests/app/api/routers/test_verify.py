"""/verify (multipart and JSON) and /verify/embeddings, with a fake engine."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from app.pipeline.compare import PlattScaling
from tests.app.api.conftest import AppFactory
from tests.app.api.fakes import EMBEDDING_SIZE, FakeEngine, jpeg, pair


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_multipart_verdict_faces_and_timings(client: TestClient, engine: FakeEngine) -> None:
    image_a, image_b = jpeg(), jpeg(color=(1, 2, 3))
    response = client.post("/verify", files=pair(image_a, image_b))
    assert response.status_code == 200
    body = response.json()
    assert body["verified"] is True
    assert body["distance"] == pytest.approx(0.02 * EMBEDDING_SIZE**0.5, rel=1e-5)
    assert body["threshold"] == 0.6
    assert body["confidence"] is None, "an uncalibrated model gives no confidence"
    assert body["model"] == {"name": "fake_model", "version": 3}
    face_a = body["faces"]["image_a"]
    assert face_a["box"] == {"x": 10.0, "y": 12.35, "width": 20.0, "height": 24.0}
    assert face_a["landmarks"]["left_eye"] == [15.0, 20.0]
    assert face_a["landmarks"]["mouth_right"] == [24.0, 30.0]
    assert face_a["score"] == pytest.approx(0.99)
    assert body["faces"]["image_b"]["box"]["x"] == 30.0
    assert body["timings_ms"] == {
        "decode": 1.0,
        "detect": 2.0,
        "align": 0.5,
        "embed": 3.0,
        "compare": 0.1,
        "total": 7.0,
    }
    (name, arguments) = engine.calls[0]
    assert name == "verify"
    assert arguments == {
        "image_a": image_a,
        "image_b": image_b,
        "threshold": None,
        "face_policy": "largest",
        "detect": True,
    }


def test_multipart_options(client: TestClient, engine: FakeEngine) -> None:
    response = client.post(
        "/verify",
        files=pair(),
        data={"threshold": "0.1", "face_policy": "strict", "detect": "false"},
    )
    assert response.status_code == 200
    assert response.json()["verified"] is False and response.json()["threshold"] == 0.1
    arguments = engine.calls[0][1]
    assert (arguments["threshold"], arguments["face_policy"], arguments["detect"]) == (
        0.1,
        "strict",
        False,
    )


def test_json_with_base64_and_a_data_url(client: TestClient, engine: FakeEngine) -> None:
    image_a, image_b = jpeg(), jpeg(color=(1, 2, 3))
    encoded_b = b64(image_b)
    wrapped = "\n".join(encoded_b[i : i + 76] for i in range(0, len(encoded_b), 76))
    response = client.post(
        "/verify",
        json={
            "image_a": "data:image/jpeg;base64," + b64(image_a),
            "image_b": wrapped,
            "face_policy": "best",
        },
    )
    assert response.status_code == 200, response.text
    arguments = engine.calls[0][1]
    assert arguments["image_a"] == image_a and arguments["image_b"] == image_b
    assert arguments["face_policy"] == "best"


def test_calibrated_confidence(client: TestClient, engine: FakeEngine) -> None:
    engine.platt = PlattScaling(a=10.0, b=-6.0)
    confidence = client.post("/verify", files=pair()).json()["confidence"]
    assert 0.5 < confidence < 1.0


def test_the_operator_threshold_applies_unless_the_request_sets_one(
    make_app: AppFactory, engine: FakeEngine
) -> None:
    client = TestClient(make_app(threshold=0.05))
    assert client.post("/verify", files=pair()).json()["threshold"] == 0.05
    assert (
        client.post("/verify", files=pair(), data={"threshold": "0.7"}).json()["threshold"] == 0.7
    )
    assert [arguments["threshold"] for _, arguments in engine.calls] == [0.05, 0.7]


def test_invalid_base64_names_the_field(client: TestClient) -> None:
    response = client.post("/verify", json={"image_a": b64(jpeg()), "image_b": "not base64!"})
    assert response.status_code == 400
    assert response.json() == {
        "detail": "image_b is not valid base64; send the image file's bytes in standard base64.",
        "code": "invalid_image",
        "image": "image_b",
    }


@pytest.mark.parametrize(
    ("json_body", "location", "kind"),
    [
        ({"image_a": "AAAA"}, ["body", "image_b"], "missing"),
        ({"image_a": "AAAA", "image_b": "AAAA", "threshold": 0}, ["body", "threshold"], None),
        (
            {"image_a": "AAAA", "image_b": "AAAA", "face_policy": "all"},
            ["body", "face_policy"],
            None,
        ),
        ({"image_a": "AAAA", "image_b": "AAAA", "treshold": 0.5}, ["body", "treshold"], None),
    ],
)
def test_json_validation_errors_in_fastapi_shape(
    client: TestClient, json_body: dict[str, object], location: list[str], kind: str | None
) -> None:
    response = client.post("/verify", json=json_body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == location
    assert kind is None or error["type"] == kind
    assert "input" not in error, "a base64 image is never echoed back"


def test_malformed_json(client: TestClient) -> None:
    response = client.post(
        "/verify", content=b'{"image_a": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_multipart_field_errors(client: TestClient) -> None:
    missing = client.post("/verify", files={"image_a": ("a.jpg", jpeg())})
    assert missing.status_code == 422
    assert missing.json()["detail"] == [
        {"type": "missing", "loc": ["body", "image_b"], "msg": "Field required"}
    ]
    as_text = client.post(
        "/verify", files={"image_a": ("a.jpg", jpeg())}, data={"image_b": "hello"}
    )
    assert as_text.json()["detail"][0]["msg"] == "image_b must be a file part, not a field."
    bad_option = client.post("/verify", files=pair(), data={"face_policy": "everyone"})
    assert bad_option.status_code == 422
    assert bad_option.json()["detail"][0]["loc"] == ["body", "face_policy"]
    empty_option = client.post("/verify", files=pair(), data={"threshold": ""})
    assert empty_option.status_code == 200, "an empty form field counts as not sent"


def test_too_many_files_and_a_broken_multipart_body(client: TestClient) -> None:
    files = [("image_a", ("a.jpg", b"1")), ("image_b", ("b.jpg", b"2")), ("x", ("c.jpg", b"3"))]
    response = client.post("/verify", files=files)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "multipart_invalid"
    broken = client.post(
        "/verify", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert broken.status_code == 422
    assert "boundary" in broken.json()["detail"][0]["msg"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_other_media_types_are_refused(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/verify", content=b"a=b", headers=headers)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert response.json()["image"] is None


def test_embeddings_verdict(client: TestClient, engine: FakeEngine) -> None:
    response = client.post(
        "/verify/embeddings",
        json={"embedding_a": [0.0] * EMBEDDING_SIZE, "embedding_b": [0.1] * EMBEDDING_SIZE},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["verified"] is False
    assert body["distance"] == pytest.approx(0.1 * EMBEDDING_SIZE**0.5)
    assert body["confidence"] is None and body["model"]["name"] == "fake_model"
    assert "faces" not in body
    assert engine.calls[0][1]["threshold"] is None
    with_threshold = client.post(
        "/verify/embeddings",
        json={
            "embedding_a": [0.0] * EMBEDDING_SIZE,
            "embedding_b": [0.1] * EMBEDDING_SIZE,
            "threshold": 2.0,
        },
    )
    assert with_threshold.json()["verified"] is True


def test_embeddings_of_the_wrong_length(client: TestClient, engine: FakeEngine) -> None:
    response = client.post(
        "/verify/embeddings",
        json={"embedding_a": [0.0] * 3, "embedding_b": [0.1] * EMBEDDING_SIZE},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "embedding_length",
            "loc": ["body", "embedding_a"],
            "msg": "embedding_a must hold 128 numbers (the model's embedding_size).",
        }
    ]
    assert engine.calls == []


def test_embeddings_must_be_json_numbers(client: TestClient) -> None:
    response = client.post("/verify/embeddings", json={"embedding_a": ["x"], "embedding_b": [0.1]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "embedding_a", 0]
    not_json = client.post("/verify/embeddings", files=pair())
    assert not_json.status_code == 415
