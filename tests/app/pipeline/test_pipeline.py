"""The whole path on real photos: decode -> detect -> align -> embed -> compare."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.pipeline.errors import InvalidImageError, NoFaceError
from app.pipeline.pipeline import FacePipeline, PipelineConfig


def _jpeg(pixels: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92, **save)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pipeline(default_model_dir: Path) -> FacePipeline:
    return FacePipeline.from_model_dir(default_model_dir)


def test_configured_from_metadata(pipeline: FacePipeline) -> None:
    alignment = pipeline.metadata.alignment
    assert alignment is not None
    assert pipeline.chip_size == (150, 150)
    assert pipeline.flip_augmentation == alignment.flip_augmentation
    assert pipeline.platt is not None, "the default model ships calibrated"


def test_same_photo_re_encoded_is_the_same_person(
    pipeline: FacePipeline, astronaut: np.ndarray
) -> None:
    smaller = np.asarray(Image.fromarray(astronaut).resize((384, 384)))
    verdict = pipeline.verify(_jpeg(astronaut), _jpeg(smaller, subsampling=2))
    assert verdict.same and verdict.distance < 0.25
    assert verdict.confidence is not None and verdict.confidence > 0.9


def test_no_face_and_bad_data_name_the_image(pipeline: FacePipeline, astronaut: np.ndarray) -> None:
    blank = _jpeg(np.full((240, 320, 3), 200, dtype=np.uint8))
    with pytest.raises(NoFaceError) as no_face:
        pipeline.verify(_jpeg(astronaut), blank)
    assert no_face.value.image == "image_b" and no_face.value.code == "no_face"
    with pytest.raises(InvalidImageError) as invalid:
        pipeline.verify(b"not an image", _jpeg(astronaut))
    assert invalid.value.image == "image_a"
    assert pipeline.embed_largest([blank]) == [None]


def test_several_faces_largest_first(pipeline: FacePipeline, astronaut: np.ndarray) -> None:
    face = astronaut[30:230, 130:330]
    group = np.full((420, 700, 3), 90, dtype=np.uint8)
    group[10:210, 10:210] = face
    group[250:350, 500:600] = np.asarray(Image.fromarray(face).resize((100, 100)))
    (faces,) = pipeline.embed_faces([pipeline.decode(_jpeg(group)).pixels])
    assert len(faces) == 2
    assert faces[0].face.area > faces[1].face.area
    # Both are the same person, at different resolutions.
    assert pipeline.compare(faces[0].embedding, faces[1].embedding).same
    (limited,) = pipeline.embed_faces([pipeline.decode(_jpeg(group)).pixels], max_faces=1)
    assert len(limited) == 1


def test_exif_rotation_finds_the_face_an_unrotated_decode_misses(
    pipeline: FacePipeline, astronaut: np.ndarray
) -> None:
    # A phone stores the sensor's pixels sideways and says so in EXIF (orientation 6: rotate 90
    # degrees clockwise to display).
    sideways = np.ascontiguousarray(np.rot90(astronaut, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(sideways, exif=exif.tobytes())
    assert pipeline.detect([sideways]) == [[]], "precondition: the sideways face is not found"
    decoded = pipeline.decode(data)
    assert decoded.orientation == 6
    (faces,) = pipeline.detect([decoded.pixels])
    assert len(faces) == 1


def test_flip_augmentation_averages_chip_and_mirror(
    default_model_dir: Path, astronaut: np.ndarray
) -> None:
    plain = FacePipeline.from_model_dir(
        default_model_dir, config=PipelineConfig(flip_augmentation=False)
    )
    flipped = FacePipeline(
        embedder=plain.embedder,
        detector=plain.detector,
        config=PipelineConfig(flip_augmentation=True),
    )
    (faces,) = plain.detect([astronaut])
    chips = plain.align(astronaut, faces)
    expected = (plain.embed_chips(chips) + plain.embed_chips(chips[:, :, ::-1])) / 2
    np.testing.assert_allclose(flipped.embed_chips(chips), expected, atol=1e-5)


@pytest.mark.data
def test_verdicts_on_labelled_photos(pipeline: FacePipeline, shared_data: Path) -> None:
    from training.pairs import make_pairs, read_identity_file

    celeba = shared_data / "celeba"
    labels = read_identity_file(
        celeba / "identity_CelebA.txt", images_dir=celeba / "img_celeba_wild"
    )
    pairs = make_pairs(labels, same_pairs=20, different_pairs=20, seed=7)
    correct = 0
    for pair in pairs:
        first, second = pipeline.embed_largest([pair.path_a.read_bytes(), pair.path_b.read_bytes()])
        if first is None or second is None:
            continue
        correct += pipeline.compare(first, second).same == pair.same
    # 40 pairs of in-the-wild photos: the feasibility run measured 0.93-0.96 accuracy.
    assert correct >= 32
