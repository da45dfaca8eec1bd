"""The exported SavedModel: round trip, metadata, idempotent builds and the command line."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from app.pipeline.embed import Embedder
from app.pipeline.metadata import ModelMetadata, Provenance, read_metadata
from training.__main__ import main
from training.export import export_saved_model
from training.import_dlib import (
    CONVERTER_VERSION,
    file_sha256,
    import_dlib,
    is_up_to_date,
    load_build_settings,
)


def test_round_trip_matches_the_in_memory_model(
    keras_tower: keras.Model, default_model_dir: Path
) -> None:
    chips = np.random.default_rng(4).integers(0, 256, (5, 150, 150, 3), dtype=np.uint8)
    expected = keras_tower.predict(chips.astype("float32"), verbose=0)
    embedder = Embedder(default_model_dir, max_batch_size=2)  # 5 chips: batches of 2, 2 and 1
    from_uint8 = embedder.embed(chips)
    from_float = embedder.embed(chips.astype("float32"))
    assert from_uint8.shape == (5, 128) and from_uint8.dtype == np.float32
    np.testing.assert_allclose(from_uint8, expected, atol=1e-5)
    np.testing.assert_allclose(from_float, expected, atol=1e-5)


def test_signatures_follow_the_contract(default_model_dir: Path) -> None:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(default_model_dir))
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        signature = loaded.signatures[name]
        (spec,) = signature.structured_input_signature[1].values()
        assert spec.name == "images" and spec.dtype == dtype
        assert spec.shape.as_list() == [None, 150, 150, 3]
        assert list(signature.structured_outputs) == ["embedding"]


def test_metadata_describes_the_export(default_model_dir: Path, dlib_model_file: Path) -> None:
    metadata = read_metadata(default_model_dir)
    assert (metadata.name, metadata.version) == ("dlib_resnet_v1", 1)
    assert metadata.input_size == (150, 150)
    assert metadata.embedding_size == 128
    assert metadata.metric == "euclidean"
    # The committed calibration (training/dlib_resnet_v1.json) sets the threshold and alignment.
    settings = load_build_settings()
    assert settings.calibration is not None
    assert metadata.threshold == settings.calibration["threshold"]
    assert metadata.calibration == settings.calibration
    assert metadata.alignment == settings.alignment
    assert metadata.alignment is not None and metadata.alignment.flip_augmentation
    assert metadata.provenance.source_sha256 == file_sha256(dlib_model_file)
    assert metadata.provenance.converter_version == CONVERTER_VERSION
    assert {"tensorflow", "keras"} <= set(metadata.provenance.frameworks)


def test_build_is_idempotent(default_model_dir: Path, dlib_model_file: Path) -> None:
    assert is_up_to_date(default_model_dir, source_sha256=file_sha256(dlib_model_file))
    saved_model = default_model_dir / "saved_model.pb"
    before = saved_model.stat().st_mtime_ns
    result = import_dlib(models_root=default_model_dir.parents[1], version=1)
    assert result == default_model_dir
    assert saved_model.stat().st_mtime_ns == before
    assert not is_up_to_date(default_model_dir, source_sha256="0" * 64)


def _metadata(input_size: tuple[int, int]) -> ModelMetadata:
    return ModelMetadata(
        name="tiny",
        version=1,
        input_size=input_size,
        embedding_size=4,
        threshold=1.0,
        threshold_source="test",
        provenance=Provenance(
            source="test", converter="test", converter_version="0", created_at="2026-01-01"
        ),
    )


def _tiny_tower() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs))
    return keras.Model(inputs, outputs)


def test_export_refuses_to_overwrite_or_to_contradict_its_metadata(tmp_path: Path) -> None:
    tower = _tiny_tower()
    with pytest.raises(ValueError, match="metadata says 9x9x3"):
        export_saved_model(tower, directory=tmp_path / "a", metadata=_metadata((9, 9)))
    assert not (tmp_path / "a").exists()
    destination = export_saved_model(tower, directory=tmp_path / "b", metadata=_metadata((8, 8)))
    assert (destination / "saved_model.pb").is_file()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    with pytest.raises(FileExistsError):
        export_saved_model(tower, directory=destination, metadata=_metadata((8, 8)))


def test_command_line_errors_are_one_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["import-dlib", "--source", str(tmp_path / "absent.dat")]) == 2
        assert main(["import-dlib", "--version", "0"]) == 2
        foreign = tmp_path / "foreign.dat"
        foreign.write_bytes(b"hello")
        assert main(["import-dlib", "--source", str(foreign), "--models-root", str(tmp_path)]) == 2
    messages = [record.getMessage() for record in caplog.records]
    assert "is not a file" in messages[0]
    assert "positive integer" in messages[1]
    assert "not a dlib network file" in messages[2]
    assert not (tmp_path / "dlib_resnet_v1").exists()


def test_a_changed_calibration_or_template_triggers_a_rebuild(
    default_model_dir: Path, dlib_model_file: Path
) -> None:
    import dataclasses

    settings = load_build_settings()
    sha = file_sha256(dlib_model_file)
    assert is_up_to_date(default_model_dir, source_sha256=sha, settings=settings)
    moved = settings.alignment.model_copy(
        update={"template": tuple((x + 1.0, y) for x, y in settings.alignment.template)}
    )
    assert not is_up_to_date(
        default_model_dir,
        source_sha256=sha,
        settings=dataclasses.replace(settings, alignment=moved),
    )
    assert not is_up_to_date(
        default_model_dir,
        source_sha256=sha,
        settings=dataclasses.replace(settings, calibration={"threshold": 0.5, "source": "x"}),
    )


def test_make_pairs_command(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    lines = ["image identity"]
    for index in range(12):
        name = f"{index:06d}.jpg"
        (images / name).write_bytes(b"")
        lines.append(f"{name} {index % 4}")
    identities = tmp_path / "identity.txt"
    identities.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "pairs.csv"
    arguments = ["make-pairs", "--identities", str(identities), "--images", str(images)]
    assert main([*arguments, "--output", str(output), "--same", "5", "--different", "5"]) == 0
    rows = output.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "path_a,path_b,same" and len(rows) == 11
    assert main([*arguments, "--output", str(output), "--same", "0"]) == 2


def test_evaluate_and_calibrate_check_their_arguments(tmp_path: Path) -> None:
    for command in ("evaluate", "calibrate"):
        arguments = [command, "--model", str(tmp_path), "--pairs", "x.csv", "--images", "."]
        assert main(arguments) == 2
