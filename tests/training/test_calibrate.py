"""Threshold and Platt calibration, and writing it into a model's metadata.json."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from app.pipeline.metadata import METADATA_FILE, read_metadata
from tests.training.test_evaluate import (
    NO_FACE,
    FakePipeline,
    make_pairs,
    model_metadata,
    write_images,
)
from training import calibrate as calibrate_module
from training.calibrate import (
    Calibration,
    apply_calibration,
    calibrate,
    calibrate_model,
    calibration_to_metadata,
)
from training.pairs import Pair, write_pairs_csv


def clusters(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Same pairs around 0.45, different pairs around 0.85, overlapping (about 2% errors)."""
    rng = np.random.default_rng(seed)
    distances = np.concatenate([rng.normal(0.45, 0.1, n), rng.normal(0.85, 0.1, n)])
    same = np.concatenate([np.ones(n, dtype=bool), np.zeros(n, dtype=bool)])
    return distances, same


def test_calibrate_on_synthetic_clusters() -> None:
    distances, same = clusters()
    result = calibrate(distances, same, source="synthetic clusters")
    assert 0.6 < result.threshold < 0.7
    assert 0.95 < result.accuracy < 0.99
    # A stricter operating point: fewer false accepts means a smaller distance.
    assert result.threshold_at_far_1e3 < result.threshold
    assert result.platt_a > 0
    probability_at_threshold = 1 / (
        1 + math.exp(result.platt_a * result.threshold + result.platt_b)
    )
    assert probability_at_threshold == pytest.approx(0.5, abs=0.15)
    assert result.pairs == {"total": 4000, "same": 2000, "different": 2000}
    assert result.source == "synthetic clusters"
    assert result.figures["roc_auc"] > 0.98
    assert result.figures["tar_at_far_1e-3"]["measurable"] is True


@pytest.mark.parametrize(
    ("distances", "same", "source", "message"),
    [
        ([0.1, 0.9], [True, False], " ", "source is empty"),
        ([0.1, math.inf], [True, False], "pairs", "only the pairs where both faces were found"),
        ([0.1, 0.9], [True, True], "pairs", "at least one same-person pair"),
        ([0.1, 0.9, 0.3], [True, False], "pairs", "one of each per pair"),
        ([0.1, math.nan], [True, False], "pairs", "NaN"),
    ],
)
def test_calibrate_rejects_invalid_inputs(
    distances: list[float], same: list[bool], source: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(distances, same, source=source)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models" / "test_model" / "1"
    directory.mkdir(parents=True)
    model_metadata(threshold=0.6).write(directory)
    (directory / METADATA_FILE).chmod(0o644)
    return directory


def test_apply_calibration_round_trip(model_dir: Path) -> None:
    distances, same = clusters(seed=1)
    result = calibrate(distances, same, source="synthetic pairs")
    before = read_metadata(model_dir)
    updated = apply_calibration(model_dir, result)
    reread = read_metadata(model_dir)
    assert reread == updated
    assert reread.threshold == result.threshold
    assert "synthetic pairs" in reread.threshold_source
    assert reread.calibration == json.loads(json.dumps(calibration_to_metadata(result)))
    assert reread.calibration is not None
    assert reread.calibration["platt"]["a"] == result.platt_a
    assert reread.calibration["platt"]["b"] == result.platt_b
    # Everything else is kept as it was.
    assert reread.model_dump(exclude={"threshold", "threshold_source", "calibration"}) == (
        before.model_dump(exclude={"threshold", "threshold_source", "calibration"})
    )
    # Replaced in place: no staging files left behind, the permissions kept.
    assert sorted(path.name for path in model_dir.iterdir()) == [METADATA_FILE]
    assert stat.S_IMODE((model_dir / METADATA_FILE).stat().st_mode) == 0o644


def test_apply_calibration_rejects_a_non_positive_threshold(model_dir: Path) -> None:
    original = (model_dir / METADATA_FILE).read_bytes()
    result = Calibration(
        threshold=0.0,
        accuracy=0.5,
        threshold_at_far_1e3=0.0,
        platt_a=1.0,
        platt_b=0.0,
        pairs={"total": 2, "same": 1, "different": 1},
        source="broken",
        figures={},
    )
    with pytest.raises(ValueError, match="must be a positive distance"):
        apply_calibration(model_dir, result)
    assert (model_dir / METADATA_FILE).read_bytes() == original


def test_apply_calibration_needs_metadata(tmp_path: Path) -> None:
    distances, same = clusters()
    with pytest.raises(ValueError, match="does not exist"):
        apply_calibration(tmp_path, calibrate(distances, same, source="pairs"))


def test_apply_calibration_leaves_the_file_whole_when_writing_fails(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = (model_dir / METADATA_FILE).read_bytes()

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    distances, same = clusters()
    with pytest.raises(OSError, match="disk full"):
        apply_calibration(model_dir, calibrate(distances, same, source="pairs"))
    assert (model_dir / METADATA_FILE).read_bytes() == original
    assert sorted(path.name for path in model_dir.iterdir()) == [METADATA_FILE]


def test_calibrate_model_with_a_fake_pipeline(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "images"
    pairs = make_pairs(root)
    pairs[0] = Pair(pairs[0].path_a, root / f"{NO_FACE}_1.jpg", same=True)
    write_images(pairs)
    pairs_file = write_pairs_csv(pairs, tmp_path / "pairs.csv", images_root=root)
    metadata = read_metadata(model_dir)
    monkeypatch.setattr(calibrate_module, "load_pipeline", lambda directory: FakePipeline(metadata))
    result = calibrate_model(model_dir=model_dir, pairs_file=pairs_file, images_root=root)
    # Only the 39 pairs with both faces are used; the fake's clusters are about 0.2 and 1.4 apart.
    assert result.pairs == {"total": 39, "same": 19, "different": 20}
    assert result.source == "the 39 of 40 pairs in pairs.csv where both faces were found"
    assert 0.2 < result.threshold < 1.4 and result.accuracy == 1.0
    assert result.platt_a > 0
    reread = read_metadata(model_dir)
    assert reread.threshold == result.threshold
    assert reread.threshold_source.endswith(result.source)
    assert reread.calibration == json.loads(json.dumps(calibration_to_metadata(result)))
