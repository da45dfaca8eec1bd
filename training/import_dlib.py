"""Build the default model: dlib's ResNet face descriptor, converted by our own code.

``python -m training import-dlib`` reads ``dlib_face_recognition_resnet_model_v1.dat`` from the
``face-recognition-models`` package (public domain) with ``training.dlib_format``, loads it into the
Keras tower of ``training.dlib_resnet`` and exports ``models/dlib_resnet_v1/1/``. dlib itself is
never imported.

What serving needs beyond the weights comes from ``training/dlib_resnet_v1.json``, committed with
this code: the alignment template (from ``python -m training derive-template``) and the threshold
calibration (from ``python -m training calibrate`` on held-out pairs of ``../shared/data``); the
data they were measured on is not committed. Building is idempotent: an export whose metadata
names the same source file hash, converter version, alignment and calibration is left alone, and
that check does not import TensorFlow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.pipeline.errors import MetadataError
from app.pipeline.metadata import (
    AlignmentInfo,
    ModelMetadata,
    Provenance,
    model_version_dir,
    read_metadata,
)
from training import dlib_format

logger = logging.getLogger(__name__)

# Bump when the conversion changes what is exported: existing exports are then rebuilt.
CONVERTER_VERSION = "1"
CONVERTER = "training.import_dlib"
SOURCE_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DEFAULT_VERSION = 1
BUILD_SETTINGS_FILE = Path(__file__).with_name("dlib_resnet_v1.json")


@dataclass(frozen=True)
class BuildSettings:
    """The model-specific facts written into metadata.json besides the weights."""

    alignment: AlignmentInfo
    calibration: dict[str, object] | None
    evaluation: dict[str, object] | None = None

    def threshold(self, network: dlib_format.DlibNetwork) -> tuple[float, str]:
        """The threshold and where it comes from: the calibration, else dlib's own."""
        if self.calibration is None:
            return (
                round(network.loss_distance_threshold, 6),
                "dlib's own distance threshold (loss_metric), not calibrated for this pipeline",
            )
        return float(
            str(self.calibration["threshold"])
        ), f"calibrated on {self.calibration['source']}"


def load_build_settings(path: Path = BUILD_SETTINGS_FILE) -> BuildSettings:
    """Reads the committed alignment and calibration of the default model."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    # Keys starting with "_" are comments for the reader of the file.
    return BuildSettings(
        alignment=AlignmentInfo.model_validate(raw["alignment"]),
        calibration=raw.get("calibration"),
        evaluation=raw.get("evaluation"),
    )


def packaged_model_file(file_name: str) -> Path:
    """Path of a file shipped in the ``face-recognition-models`` package.

    The package is located without importing it: its ``__init__`` needs ``pkg_resources``, which
    recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The face-recognition-models package is not installed; run `make install`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the face-recognition-models package.")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_up_to_date(
    directory: Path, *, source_sha256: str, settings: BuildSettings | None = None
) -> bool:
    """Whether ``directory`` holds an export of this source, converter version and settings."""
    settings = settings if settings is not None else load_build_settings()
    if not (directory / "saved_model.pb").is_file():
        return False
    try:
        metadata = read_metadata(directory)
    except MetadataError:
        return False
    provenance = metadata.provenance
    return (
        provenance.source_sha256 == source_sha256
        and provenance.converter == CONVERTER
        and provenance.converter_version == CONVERTER_VERSION
        and metadata.alignment == settings.alignment
        and metadata.calibration == settings.calibration
        and metadata.evaluation == settings.evaluation
    )


def import_dlib(
    *,
    models_root: Path,
    source: Path | None = None,
    version: int = DEFAULT_VERSION,
    force: bool = False,
) -> Path:
    """Converts the dlib descriptor into ``<models_root>/dlib_resnet_v1/<version>``, returned."""
    source = source if source is not None else packaged_model_file(SOURCE_FILE)
    destination = model_version_dir(models_root, "dlib_resnet_v1", version)
    source_sha256 = file_sha256(source)
    settings = load_build_settings()
    if not force and is_up_to_date(destination, source_sha256=source_sha256, settings=settings):
        logger.info("%s is up to date; nothing to do (use --force to rebuild)", destination)
        return destination

    # Heavy imports only when there is work to do.
    import keras
    import tensorflow as tf

    from training import dlib_resnet
    from training.export import export_saved_model

    network = dlib_format.read_network(source)
    logger.info("Read %d layers from %s", len(network.layers), source)
    model = dlib_resnet.import_dlib_network(network)
    threshold, threshold_source = settings.threshold(network)
    metadata = ModelMetadata(
        name=dlib_resnet.MODEL_NAME,
        version=version,
        input_size=(network.input.rows, network.input.cols),
        embedding_size=int(model.output_shape[-1]),
        threshold=threshold,
        threshold_source=threshold_source,
        alignment=settings.alignment,
        calibration=settings.calibration,
        evaluation=settings.evaluation,
        provenance=Provenance(
            source=f"face-recognition-models: {source.name}",
            source_sha256=network.sha256,
            converter=CONVERTER,
            converter_version=CONVERTER_VERSION,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            frameworks={"tensorflow": tf.__version__, "keras": keras.__version__},
            license="public domain (dlib-models, Davis King)",
        ),
    )
    return export_saved_model(model, directory=destination, metadata=metadata, overwrite=True)
