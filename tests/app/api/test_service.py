"""The whole service with the real model: lifespan, warm-up, verdicts, batching under concurrency.

One app is started for the module (the model loads once); its batchers wait up to 20 ms so that
concurrent requests visibly share model calls.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings

Pixels = npt.NDArray[np.uint8]


def jpeg(pixels: Pixels, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(default_model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, model_dir=default_model_dir, max_wait_ms=20)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def astronaut_jpeg(astronaut: Pixels) -> bytes:
    return jpeg(astronaut)


@pytest.fixture(scope="module")
def altered_copy(astronaut: Pixels) -> bytes:
    """The astronaut rescaled to 60%, mirrored, and re-compressed harder."""
    smaller = Image.fromarray(astronaut).resize((307, 307), Image.Resampling.BILINEAR)
    return jpeg(np.ascontiguousarray(np.asarray(smaller)[:, ::-1]), quality=60)


@pytest.fixture(scope="module")
def no_face_photo() -> bytes:
    from skimage import data

    return jpeg(np.asarray(data.coffee(), dtype=np.uint8))  # a cup of coffee, 600 x 400


def test_ready_after_a_warm_up_on_a_real_face(client: TestClient) -> None:
    assert client.get("/health/ready").json() == {"status": "ok"}
    model = client.get("/model").json()
    assert model["name"] == "dlib_resnet_v1" and model["embedding_size"] == 128


def test_the_same_face_rescaled_recompressed_and_mirrored_is_verified(
    client: TestClient, astronaut_jpeg: bytes, altered_copy: bytes
) -> None:
    response = client.post(
        "/verify",
        files={"image_a": ("a.jpg", astronaut_jpeg), "image_b": ("b.jpg", altered_copy)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["verified"] is True and body["distance"] < 0.45
    assert body["threshold"] == client.get("/model").json()["threshold"]
    box_a, box_b = body["faces"]["image_a"]["box"], body["faces"]["image_b"]["box"]
    # The face is in the top middle of the 512 px photo; the copy is 0.6 times as large.
    assert 150 < box_a["x"] < 220 and 40 < box_a["y"] < 100
    assert box_b["width"] == pytest.approx(0.6 * box_a["width"], rel=0.15)
    assert body["timings_ms"]["total"] > 0


def test_json_base64_gives_the_same_answer(
    client: TestClient, astronaut_jpeg: bytes, altered_copy: bytes
) -> None:
    multipart = client.post(
        "/verify",
        files={"image_a": ("a.jpg", astronaut_jpeg), "image_b": ("b.jpg", altered_copy)},
    ).json()
    as_json = client.post(
        "/verify",
        json={
            "image_a": base64.b64encode(astronaut_jpeg).decode(),
            "image_b": base64.b64encode(altered_copy).decode(),
        },
    ).json()
    assert as_json["distance"] == pytest.approx(multipart["distance"], abs=1e-5)


def test_a_photo_without_a_face_names_the_image(
    client: TestClient, astronaut_jpeg: bytes, no_face_photo: bytes
) -> None:
    response = client.post(
        "/verify",
        files={"image_a": ("a.jpg", astronaut_jpeg), "image_b": ("coffee.jpg", no_face_photo)},
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": "No face was found in image_b.",
        "code": "no_face",
        "image": "image_b",
    }


def test_embed_two_images_then_compare_the_embeddings(
    client: TestClient, astronaut_jpeg: bytes, altered_copy: bytes, no_face_photo: bytes
) -> None:
    files = [
        ("images", ("a.jpg", astronaut_jpeg)),
        ("images", ("coffee.jpg", no_face_photo)),
        ("images", ("b.jpg", altered_copy)),
    ]
    response = client.post("/embed", files=files)
    assert response.status_code == 200
    images = response.json()["images"]
    assert [len(entry["faces"]) for entry in images] == [1, 0, 1]
    first, second = images[0]["faces"][0], images[2]["faces"][0]
    assert len(first["embedding"]) == 128 and first["score"] > 0.9
    verdict = client.post(
        "/verify/embeddings",
        json={"embedding_a": first["embedding"], "embedding_b": second["embedding"]},
    ).json()
    assert verdict["verified"] is True


def test_32_simultaneous_requests_share_batches(client: TestClient, astronaut: Pixels) -> None:
    # Small photos keep this quick on two cores; each pair differs so nothing can be cached.
    face = astronaut[20:240, 120:340]
    pairs = [
        (jpeg(face, quality=70 + index % 25), jpeg(face[:, ::-1], quality=95 - index % 25))
        for index in range(32)
    ]

    def verify(pair: tuple[bytes, bytes]) -> int:
        files = {"image_a": ("a.jpg", pair[0]), "image_b": ("b.jpg", pair[1])}
        response = client.post("/verify", files=files)
        return response.status_code if not response.is_success else int(response.json()["verified"])

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(verify, pairs))
    assert results == [1] * 32, "every request answered 200 with verified true"
    largest = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name != "faceverify_inference_batch_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["le"] == "1.0":
                largest[sample.labels["batcher"]] = sample.value
            if sample.name.endswith("_count"):
                largest[sample.labels["batcher"] + "_count"] = sample.value
    # Some batch of each batcher held more than one item: fewer batches of size one than batches.
    for batcher in ("detect", "embed"):
        assert largest[batcher] < largest[f"{batcher}_count"], batcher


@pytest.mark.data
def test_celeba_pairs(client: TestClient, shared_data: Path) -> None:
    from training.pairs import make_pairs, read_identity_file

    images = shared_data / "celeba" / "img_celeba_wild"
    labels = read_identity_file(shared_data / "celeba" / "identity_CelebA.txt", images_dir=images)
    pairs = make_pairs(labels, same_pairs=4, different_pairs=4, seed=7)
    distances: dict[bool, list[float]] = {True: [], False: []}
    correct = 0
    for pair in pairs:
        files = {
            "image_a": ("a.jpg", pair.path_a.read_bytes()),
            "image_b": ("b.jpg", pair.path_b.read_bytes()),
        }
        response = client.post("/verify", files=files)
        assert response.status_code in (200, 422), response.text
        if response.status_code == 422:
            assert response.json()["code"] == "no_face"
            continue
        distances[pair.same].append(response.json()["distance"])
        correct += response.json()["verified"] == pair.same
    # Wild CelebA photos are hard for an uncalibrated threshold, so the ranking is what must hold:
    # same-person pairs closer than different-person pairs (the ROC AUC over these pairs).
    ordered = [same < different for same in distances[True] for different in distances[False]]
    assert len(ordered) >= 9, "most pairs had faces"
    assert sum(ordered) / len(ordered) >= 0.8, distances
    assert correct >= 5, f"{correct} of {len(pairs)} pairs judged right at the threshold"
