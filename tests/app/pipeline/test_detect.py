"""MTCNN detection: batching, scaling back, filters, ordering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.pipeline.detect import DetectorConfig, FaceDetector


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectorConfig(max_side=640, min_face_size=20, min_score=0.9))


def test_finds_the_astronauts_face(detector: FaceDetector, astronaut: np.ndarray) -> None:
    (faces,) = detector.detect([astronaut])
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95
    x, y, width, height = face.box
    assert 170 < x < 195 and 55 < y < 75 and 70 < width < 100 and 90 < height < 120
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert mouth_left[0] < mouth_right[0]


def test_batches_images_of_different_sizes(detector: FaceDetector, astronaut: np.ndarray) -> None:
    # mtcnn's own batching misplaces boxes of smaller images; ours must not.
    crop = np.ascontiguousarray(astronaut[:200, 100:400])
    blank = np.zeros((300, 700, 3), dtype=np.uint8)
    full, cropped, empty = detector.detect([astronaut, crop, blank])
    assert empty == []
    assert len(full) == 1 and len(cropped) == 1
    np.testing.assert_allclose(cropped[0].landmarks + [100.0, 0.0], full[0].landmarks, atol=3.0)


def test_maps_boxes_back_from_a_downscaled_image(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    large = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BILINEAR))
    (small_faces,) = detector.detect([astronaut])
    (large_faces,) = detector.detect([large])
    assert len(large_faces) == 1
    np.testing.assert_allclose(large_faces[0].landmarks, small_faces[0].landmarks * 4, atol=12.0)


def test_tiny_images_have_no_face(detector: FaceDetector) -> None:
    tiny = [np.zeros((1, 1, 3), np.uint8), np.full((5, 9, 3), 128, np.uint8)]
    assert detector.detect(tiny) == [[], []]
    assert detector.detect([]) == []


def test_minimum_face_size_and_order(astronaut: np.ndarray) -> None:
    face = astronaut[40:200, 150:300]
    small = np.asarray(Image.fromarray(face).resize((75, 80)))
    group = np.zeros((400, 600, 3), dtype=np.uint8)
    group[20:180, 20:170] = face
    group[200:280, 400:475] = small
    (faces,) = FaceDetector(DetectorConfig(min_face_size=20)).detect([group])
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].box[0] < 200 and faces[1].box[0] > 380
    (large_only,) = FaceDetector(DetectorConfig(min_face_size=70)).detect([group])
    assert len(large_only) == 1 and large_only[0].box[0] < 200


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="min_score"):
        DetectorConfig(min_score=1.5)
    with pytest.raises(ValueError, match="max_side"):
        DetectorConfig(max_side=10)


def test_a_photos_faces_do_not_depend_on_its_batch(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    crop = np.ascontiguousarray(astronaut[:300, 50:450])
    other = np.ascontiguousarray(astronaut[100:, :])
    (alone,) = detector.detect([crop])
    together = detector.detect([other, crop, crop])
    assert len(alone) == 1
    for faces in together[1:]:
        np.testing.assert_allclose(faces[0].landmarks, alone[0].landmarks, atol=1e-3)
        assert faces[0].score == pytest.approx(alone[0].score, abs=1e-4)
