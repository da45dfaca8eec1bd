"""metadata.json: reading, validation and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.pipeline.errors import MetadataError
from app.pipeline.metadata import model_version_dir, read_metadata


def test_missing_metadata_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="make model"):
        read_metadata(tmp_path)


def test_invalid_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MetadataError, match="cannot be read as JSON"):
        read_metadata(tmp_path)


def test_invalid_fields_are_refused(default_model_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((default_model_dir / "metadata.json").read_text(encoding="utf-8"))
    raw["threshold"] = -1
    (tmp_path / "metadata.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(MetadataError, match="threshold"):
        read_metadata(tmp_path)


def test_model_version_dir_layout() -> None:
    assert model_version_dir("models", "dlib_resnet_v1", 3) == Path("models/dlib_resnet_v1/3")
    with pytest.raises(ValueError, match="positive integer"):
        model_version_dir("models", "x", 0)
