"""``metadata.json``: the contract between a model's export and the service that loads it.

Everything model-specific that serving needs (input size, signature, metric, threshold, and later
the alignment template and calibration) is read from here, never hard-coded a second time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.pipeline.errors import MetadataError

METADATA_FILE = "metadata.json"
SCHEMA_VERSION: Final = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignatureInfo(_Frozen):
    """How to call the SavedModel."""

    name: str = Field(default="serving_default", description="The serving signature's name.")
    uint8_name: str | None = Field(
        default="serving_uint8", description="A signature taking uint8 chips, if exported."
    )
    input: str = Field(default="images", description="The signature's input name.")
    output: str = Field(default="embedding", description="The signature's output name.")


class Provenance(_Frozen):
    """Where the model came from, so an artifact can be traced and rebuilt."""

    source: str = Field(
        description="What the weights were made from (a file name or a training run)."
    )
    source_sha256: str | None = Field(default=None, description="SHA-256 of the source file.")
    converter: str = Field(description="The code that produced the artifact.")
    converter_version: str = Field(description="That code's version; a change forces a rebuild.")
    created_at: str = Field(description="When the artifact was written, ISO 8601 UTC.")
    frameworks: dict[str, str] = Field(
        default_factory=dict, description="Versions of the frameworks used to export it."
    )
    license: str | None = Field(default=None, description="The weights' licence.")


class AlignmentInfo(_Frozen):
    """How faces are cut for this model: five landmarks onto a template, similarity transform."""

    method: Literal["similarity_5_point"] = "similarity_5_point"
    landmarks: tuple[str, str, str, str, str] = Field(
        default=("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"),
        description="Landmark order; left means the image's left.",
    )
    template: tuple[
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
    ] = Field(
        description="Where each landmark lands in the chip, (x, y), pixel centres on integers."
    )
    flip_augmentation: bool = Field(
        default=False,
        description="Embed each chip and its mirror image and average the two embeddings.",
    )
    derivation: dict[str, Any] = Field(
        default_factory=dict, description="How the template was obtained, with its figures."
    )


class ModelMetadata(_Frozen):
    """Describes one exported embedding model (``models/<name>/<version>/metadata.json``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(
        description="The model's name, as in models/<name>/.", examples=["dlib_resnet_v1"]
    )
    version: int = Field(ge=1, description="The model's version, as in models/<name>/<version>/.")
    input_size: tuple[int, int] = Field(description="Chip height and width in pixels.")
    input_channels: Literal["RGB"] = "RGB"
    input_range: tuple[float, float] = Field(
        default=(0.0, 255.0),
        description="Pixel values the signature expects; it normalises inside.",
    )
    embedding_size: int = Field(ge=1, description="Length of one embedding.")
    metric: Literal["euclidean"] = "euclidean"
    threshold: float = Field(gt=0, description="Distances at or below this mean the same person.")
    threshold_source: str = Field(description="Where the threshold comes from.")
    signature: SignatureInfo = Field(default_factory=SignatureInfo)
    provenance: Provenance
    alignment: AlignmentInfo | None = Field(
        default=None, description="How faces are aligned to the model's chips."
    )
    calibration: dict[str, Any] | None = Field(
        default=None, description="Threshold calibration and distance-to-probability mapping."
    )
    evaluation: dict[str, Any] | None = Field(default=None, description="Evaluation figures.")
    training: dict[str, Any] | None = Field(
        default=None,
        description="For a trained model: the training configuration, the fingerprint of its "
        "data and its history.",
    )

    def write(self, directory: str | Path) -> Path:
        """Writes ``metadata.json`` into ``directory`` and returns its path."""
        path = Path(directory) / METADATA_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


def model_version_dir(models_root: str | Path, name: str, version: int) -> Path:
    """``<models_root>/<name>/<version>``, the layout TF Serving and the service expect."""
    if version < 1:
        raise ValueError(f"A model version must be a positive integer, got {version}.")
    return Path(models_root) / name / str(version)


def read_metadata(directory: str | Path) -> ModelMetadata:
    """Reads and validates ``<directory>/metadata.json``."""
    path = Path(directory) / METADATA_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetadataError(
            f"{path} does not exist; build the default model with `make model` "
            "or point the model directory at an exported model."
        ) from None
    except (OSError, json.JSONDecodeError) as error:
        raise MetadataError(f"{path} cannot be read as JSON: {error}.") from error
    try:
        return ModelMetadata.model_validate(raw)
    except ValidationError as error:
        raise MetadataError(f"{path} is not valid model metadata: {error}") from error
