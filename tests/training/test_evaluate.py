"""Evaluation with fake embeddings (never the real model): caching, missing faces, reports."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from app.pipeline.errors import InvalidImageError
from app.pipeline.metadata import ModelMetadata, Provenance
from training import evaluate
from training.pairs import Pair, write_pairs_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NO_FACE = "noface"


def fake_embedding(name: str) -> np.ndarray | None:
    """The embedding of ``<identity>_<n>`` (``id3_1``): near a point chosen by the identity.

    Images of one identity land within about 0.3 of each other and different identities about 1.4
    apart, so a threshold near 0.8 separates them; ``noface_<n>`` has no face.
    """
    identity, number = name.rsplit("_", 1)
    if identity == NO_FACE:
        return None
    centre = np.zeros(8, dtype=np.float32)
    centre[int(identity[2:]) % 8] = 1.0
    noise = np.random.default_rng(int(number) + 100 * int(identity[2:])).normal(0, 0.05, 8)
    return (centre + noise).astype(np.float32)


class FakeEmbedder:
    """An EmbedFn that embeds by file name (``fake_embedding``) and counts every call."""

    def __init__(self) -> None:
        self.calls: Counter[Path] = Counter()
        self.batches: list[int] = []

    def __call__(self, paths: Sequence[Path]) -> list[np.ndarray | None]:
        self.batches.append(len(paths))
        self.calls.update(paths)
        return [fake_embedding(path.stem) for path in paths]


class FakePipeline:
    """Stands in for FacePipeline, embedding by file content: ``fake_embedding`` of the text, but
    b"bad" cannot be decoded."""

    def __init__(self, metadata: ModelMetadata | None = None) -> None:
        self._metadata = metadata
        self.batches: list[int] = []

    @property
    def metadata(self) -> ModelMetadata:
        assert self._metadata is not None
        return self._metadata

    def embed_largest(self, images: Sequence[bytes]) -> list[np.ndarray | None]:
        self.batches.append(len(images))
        if b"bad" in images:
            raise InvalidImageError("The image cannot be decoded.")
        return [fake_embedding(data.decode()) for data in images]


def write_images(pairs: Sequence[Pair]) -> None:
    """Creates each image file, its content the name FakePipeline embeds (b"bad" for bad_*)."""
    for pair in pairs:
        for path in (pair.path_a, pair.path_b):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"bad" if path.stem.startswith("bad") else path.stem.encode())


def model_metadata(threshold: float = 0.8) -> ModelMetadata:
    return ModelMetadata(
        name="test_model",
        version=1,
        input_size=(150, 150),
        embedding_size=8,
        threshold=threshold,
        threshold_source="a guess",
        provenance=Provenance(
            source="test",
            converter="tests",
            converter_version="1",
            created_at="2024-01-01T00:00:00+00:00",
        ),
    )


def make_pairs(root: Path, count: int = 40) -> list[Pair]:
    """``count`` pairs alternating same/different over 8 identities of 5 images each."""
    pairs = []
    for index in range(count):
        identity = index % 8
        first = root / f"id{identity}_{index % 5}.jpg"
        if index % 2 == 0:
            second = root / f"id{identity}_{(index + 1) % 5}.jpg"
        else:
            second = root / f"id{(identity + 1) % 8}_{index % 5}.jpg"
        pairs.append(Pair(first, second, same=index % 2 == 0))
    return pairs


def test_embeds_each_unique_image_once(tmp_path: Path) -> None:
    fake = FakeEmbedder()
    a, b = tmp_path / "id1_1.jpg", tmp_path / "id2_1.jpg"
    spelled_differently = tmp_path / "sub" / ".." / "id1_1.jpg"
    result = evaluate.embed_unique_images(
        [a, b, a, spelled_differently, b], embed=fake, batch_size=1
    )
    assert set(fake.calls.values()) == {1} and len(fake.calls) == 2
    assert set(result) == {a, b, spelled_differently}
    assert result[spelled_differently] is result[a]
    assert fake.batches == [1, 1]


def test_rejects_a_bad_batch_size_or_a_short_answer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.embed_unique_images([tmp_path / "id1_1.jpg"], embed=FakeEmbedder(), batch_size=0)
    with pytest.raises(ValueError, match="returned 0 results for 1 images"):
        evaluate.embed_unique_images([tmp_path / "id1_1.jpg"], embed=lambda paths: [])


def test_evaluates_pairs_with_missing_faces(tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path)
    # Two pairs with an image without a face: one same pair (a false reject), one different.
    pairs[0] = Pair(pairs[0].path_a, tmp_path / f"{NO_FACE}_1.jpg", same=True)
    pairs[1] = Pair(tmp_path / f"{NO_FACE}_1.jpg", pairs[1].path_b, same=False)
    pairs[3] = Pair(tmp_path / f"{NO_FACE}_2.jpg", pairs[3].path_b, same=False)
    fake = FakeEmbedder()
    result = evaluate.evaluate_pairs(
        pairs, embed=fake, threshold=0.8, batch_size=7, images_root=tmp_path
    )
    unique_images = {path for pair in pairs for path in (pair.path_a, pair.path_b)}
    assert fake.calls == Counter(dict.fromkeys(unique_images, 1))
    assert max(fake.batches) == 7
    assert result.images == len(unique_images)
    assert result.images_without_face == 2
    assert sorted(result.images_without_face_examples) == ["noface_1.jpg", "noface_2.jpg"]
    assert result.pairs_with_missing_face == 3
    assert "rejected" in result.missing_face_policy
    assert (result.pairs, result.same_pairs, result.different_pairs) == (40, 20, 20)
    # Only the same pair with a missing face is wrong at the threshold.
    assert result.accuracy_at_threshold == pytest.approx(39 / 40)
    assert result.threshold == 0.8
    both = result.on_pairs_with_both_faces
    assert both is not None
    assert (both.pairs, both.same_pairs, both.different_pairs) == (37, 19, 18)
    assert both.accuracy_at_threshold == 1.0
    assert both.roc_auc == 1.0 and both.equal_error_rate == 0.0
    assert result.roc_auc < 1.0
    assert len(result.ten_fold_thresholds) == 10
    # 20 different pairs: FAR 1e-3 and 1e-2 are below 1/20, so neither is measurable.
    assert not result.tar_at_far_1e3.measurable and not result.tar_at_far_1e2.measurable


def test_to_dict_is_strict_json(tmp_path: Path) -> None:
    result = evaluate.evaluate_pairs(make_pairs(tmp_path), embed=FakeEmbedder(), threshold=0.8)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    for key in (
        "pairs",
        "same_pairs",
        "different_pairs",
        "images",
        "images_without_face",
        "pairs_with_missing_face",
        "missing_faces",
        "ten_fold_accuracy",
        "accuracy_at_threshold",
        "threshold",
        "roc_auc",
        "equal_error_rate",
        "tar_at_far_1e-3",
        "tar_at_far_1e-2",
        "on_pairs_with_both_faces",
    ):
        assert key in data
    assert set(data["ten_fold_accuracy"]) >= {"mean", "std"}
    assert set(data["tar_at_far_1e-3"]) >= {"tar", "threshold", "measurable"}
    assert data["images_without_face"] == {"count": 0, "examples": []}
    assert data["on_pairs_with_both_faces"]["pairs"] == 40


def test_writes_the_report(tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "images")
    pairs[0] = Pair(pairs[0].path_a, tmp_path / f"{NO_FACE}_1.jpg", same=True)
    measured = evaluate.pair_distances(pairs, embed=FakeEmbedder())
    assert math.isinf(measured.distances[0]) and np.isfinite(measured.distances[1:]).all()
    result = evaluate.evaluate_distances(measured, threshold=0.8)
    files = evaluate.write_report(
        result, measured.distances, measured.same, output_dir=tmp_path / "report"
    )
    assert {path.name for path in files.values()} == {
        "evaluation.json",
        "roc.png",
        "distances.png",
    }
    assert json.loads(files["evaluation"].read_text()) == result.to_dict()
    for name in ("roc", "distances"):
        assert files[name].read_bytes()[:8] == PNG_MAGIC


def test_every_face_missing_is_an_error(tmp_path: Path) -> None:
    pairs = [
        Pair(tmp_path / f"{NO_FACE}_{n}.jpg", tmp_path / f"{NO_FACE}_9.jpg", same=n % 2 == 0)
        for n in range(4)
    ]
    with pytest.raises(ValueError, match="No pair had a face found in both images"):
        evaluate.evaluate_pairs(pairs, embed=FakeEmbedder(), threshold=0.8, folds=2)


def test_pipeline_embed_fn_confines_a_bad_image_to_itself(tmp_path: Path) -> None:
    contents = {"a.jpg": b"id1_1", "b.jpg": b"bad", "c.jpg": b"noface_1", "d.jpg": b"id2_1"}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    pipeline = FakePipeline()
    embed = evaluate.pipeline_embed_fn(pipeline)
    paths = [tmp_path / name for name in contents] + [tmp_path / "unreadable.jpg"]
    results = embed(paths)
    assert [value is not None for value in results] == [True, False, False, True, False]
    np.testing.assert_array_equal(results[0], fake_embedding("id1_1"))
    np.testing.assert_array_equal(results[3], fake_embedding("id2_1"))
    # One batch of the four readable files fails, then one call per image.
    assert pipeline.batches == [4, 1, 1, 1, 1]


def test_evaluate_model_with_a_fake_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "images"
    pairs = make_pairs(root)
    pairs[0] = Pair(pairs[0].path_a, root / "bad_1.jpg", same=True)
    pairs[1] = Pair(root / f"{NO_FACE}_1.jpg", pairs[1].path_b, same=False)
    write_images(pairs)
    pairs_file = write_pairs_csv(pairs, tmp_path / "pairs.csv", images_root=root)
    model_dirs: list[Path] = []

    def load(model_dir: Path) -> FakePipeline:
        model_dirs.append(model_dir)
        return FakePipeline(model_metadata(threshold=0.8))

    monkeypatch.setattr(evaluate, "load_pipeline", load)
    output = tmp_path / "report"
    result = evaluate.evaluate_model(
        model_dir=tmp_path / "model", pairs_file=pairs_file, images_root=root, output_dir=output
    )
    assert model_dirs == [tmp_path / "model"]
    assert result.threshold == 0.8
    assert result.images_without_face == 2
    assert sorted(result.images_without_face_examples) == ["bad_1.jpg", f"{NO_FACE}_1.jpg"]
    assert result.pairs_with_missing_face == 2
    assert result.accuracy_at_threshold == pytest.approx(39 / 40)
    assert sorted(path.name for path in output.iterdir()) == [
        "distances.png",
        "evaluation.json",
        "roc.png",
    ]
    assert json.loads((output / "evaluation.json").read_text()) == result.to_dict()


def test_evaluate_model_stops_on_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs_file = write_pairs_csv(make_pairs(tmp_path), tmp_path / "pairs.csv", images_root=tmp_path)
    monkeypatch.setattr(evaluate, "load_pipeline", lambda model_dir: pytest.fail("loaded"))
    with pytest.raises(FileNotFoundError, match="check that the images root"):
        evaluate.evaluate_model(
            model_dir=tmp_path, pairs_file=pairs_file, images_root=tmp_path, output_dir=tmp_path
        )


def test_check_images_exist(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    evaluate.check_images_exist(
        [Pair(tmp_path / "a.jpg", tmp_path / "a.jpg", same=True)], images_root=tmp_path
    )
    with pytest.raises(FileNotFoundError, match="1 of 2 images"):
        evaluate.check_images_exist(
            [Pair(tmp_path / "a.jpg", tmp_path / "b.jpg", same=False)], images_root=tmp_path
        )
