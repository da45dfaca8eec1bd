"""The prepared dataset's on-disk format: TFRecord shards of aligned chips plus ``manifest.json``.

``python -m training prepare`` writes, and training reads::

    OUT/manifest.json                       PreparedManifest, written last
    OUT/shards/<split>-<index:05d>.tfrecord tf.train.Example records (see below)
    OUT/shards/<split>-<index:05d>.json     sidecar: marks the shard done, with its counts
    OUT/missing_faces.csv                   split,source,reason for every image without a chip

Each record holds three byte features, all required: ``chip`` (the aligned chip, JPEG or PNG,
RGB, ``chip_size`` pixels), ``identity`` (the identity label as UTF-8 text) and ``source`` (the
image's path relative to the images root, UTF-8).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.pipeline.metadata import AlignmentInfo

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS: Final = ("train", "validation", "test")
FORMAT_VERSION: Final = 1
MANIFEST_FILE: Final = "manifest.json"
SHARDS_DIR: Final = "shards"
MISSING_FACES_FILE: Final = "missing_faces.csv"
ChipFormat = Literal["jpeg", "png"]
MissingReason = Literal["no_face", "cannot_decode"]
CHIP_FORMATS: Final[tuple[ChipFormat, ...]] = ("jpeg", "png")
JPEG_QUALITY: Final = 95
FEATURE_KEYS: Final = ("chip", "identity", "source")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SplitInfo(_Frozen):
    """What one split holds."""

    images: int = Field(ge=0, description="Input images assigned to the split.")
    chips: int = Field(ge=0, description="Images whose face was found: one chip each.")
    identities: int = Field(ge=0, description="Identities with at least one chip.")
    missing_faces: int = Field(ge=0, description="Images with no chip (no face, unreadable).")
    shards: tuple[str, ...] = Field(description="Shard files, relative to OUT/shards, in order.")


class SourceInfo(_Frozen):
    """Where the images and labels came from."""

    kind: Literal["celeba", "folder"]
    images: str = Field(description="The images' root folder; sources are relative to it.")
    identity_file: str | None = None
    partition_file: str | None = None


class PreparedManifest(_Frozen):
    """``manifest.json``: describes a prepared dataset; written after every shard is done."""

    format_version: Literal[1] = FORMAT_VERSION
    chip_size: tuple[int, int] = Field(description="Chip rows and columns.")
    chip_format: ChipFormat
    alignment: AlignmentInfo = Field(description="Copied from the alignment model's metadata.")
    alignment_model: str = Field(description="The model folder whose template was used.")
    detector: dict[str, Any] = Field(description="The face detector's settings.")
    source: SourceInfo
    split_method: Literal["partition_file", "seeded_by_identity"]
    split_seed: int | None
    splits: dict[str, SplitInfo]
    excluded_identities: int = Field(ge=0)
    fingerprint: str = Field(
        description="SHA-256 over the (split, source, identity) rows that went in, the chip size "
        "and format, the alignment template and the detector settings."
    )
    created_at: str = Field(description="ISO 8601 UTC.")
    frameworks: dict[str, str] = Field(default_factory=dict)

    @field_validator("splits")
    @classmethod
    def _every_split(cls, splits: dict[str, SplitInfo]) -> dict[str, SplitInfo]:
        if sorted(splits) != sorted(SPLITS):
            raise ValueError(f"splits must be exactly {', '.join(SPLITS)}, got {sorted(splits)}")
        return {split: splits[split] for split in SPLITS}


def read_manifest(prepared_dir: Path) -> PreparedManifest:
    """Reads and validates ``<prepared_dir>/manifest.json``."""
    path = Path(prepared_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; run `python -m training prepare` to write the dataset, or "
            "let an interrupted run finish (the manifest is written last)."
        )
    try:
        return PreparedManifest.model_validate_json(path.read_bytes())
    except ValidationError as error:
        raise ValueError(
            f"{path} is not a valid prepared-dataset manifest; prepare the dataset again with "
            f"--overwrite. {error}"
        ) from error


def write_manifest(prepared_dir: Path, manifest: PreparedManifest) -> Path:
    """Writes ``manifest.json`` atomically (beside it, then renamed over it)."""
    path = Path(prepared_dir) / MANIFEST_FILE
    write_text_atomically(path, manifest.model_dump_json(indent=2) + "\n")
    return path


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that a reader sees the old file or the new, never half."""
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def write_json_atomically(path: Path, content: Any) -> None:
    write_text_atomically(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


class MissingFace(_Frozen):
    """An image that gave no chip, and why: ``no_face`` or ``cannot_decode``."""

    source: str
    reason: MissingReason


class ShardSummary(_Frozen):
    """A shard's sidecar ``<split>-<index:05d>.json``: written after its TFRecord, marks it done.

    ``fingerprint`` is the whole dataset's (as in the manifest); ``shard_fingerprint`` also covers
    the shard's own rows, so a shard cut differently (another --shard-size) is never taken as done.
    """

    format_version: Literal[1] = FORMAT_VERSION
    fingerprint: str
    shard_fingerprint: str
    split: str
    index: int = Field(ge=0)
    file: str = Field(description="The TFRecord file, relative to OUT/shards.")
    images: int = Field(ge=0)
    chips: int = Field(ge=0)
    identities: dict[str, int] = Field(description="Chips per identity.")
    missing: tuple[MissingFace, ...]


def shard_stem(split: str, index: int) -> str:
    """``<split>-<index:05d>``: the shard's file name without its suffix."""
    return f"{split}-{index:05d}"


@dataclass(frozen=True)
class SplitData:
    """Every example of one split, in shard order."""

    chips: npt.NDArray[np.object_]  # encoded chip bytes
    identities: npt.NDArray[np.str_]
    sources: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.chips)


def load_split(prepared_dir: Path, split: str) -> SplitData:
    """Reads every shard of ``split`` listed in the manifest, in order, into memory."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    manifest = read_manifest(prepared_dir)
    files = [str(Path(prepared_dir) / SHARDS_DIR / name) for name in manifest.splits[split].shards]
    missing = [name for name in files if not Path(name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shard(s) of the {split} split are missing, e.g. {missing[0]}; "
            "run `python -m training prepare` again to redo them."
        )
    chips: list[bytes] = []
    identities: list[str] = []
    sources: list[str] = []
    if files:
        import tensorflow as tf

        dataset = tf.data.TFRecordDataset(files).batch(1024).map(parse_example)
        for batch in dataset.as_numpy_iterator():
            chips.extend(bytes(value) for value in batch["chip"])
            identities.extend(value.decode("utf-8") for value in batch["identity"])
            sources.extend(value.decode("utf-8") for value in batch["source"])
    chip_array = np.empty(len(chips), dtype=object)
    chip_array[:] = chips
    return SplitData(
        chips=chip_array,
        identities=np.array(identities, dtype=np.str_),
        sources=np.array(sources, dtype=np.str_),
    )


def serialize_example(*, chip: bytes, identity: str, source: str) -> bytes:
    """One record: the encoded chip, its identity label and its source path."""
    import tensorflow as tf

    def feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "chip": feature(chip),
                "identity": feature(identity.encode("utf-8")),
                "source": feature(source.encode("utf-8")),
            }
        )
    )
    serialized: bytes = example.SerializeToString()
    return serialized


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized record (a scalar string tensor) or a batch (a vector) for tf.data.

    The values stay encoded: decode chips with ``decode_chip_tensor``.
    """
    import tensorflow as tf

    features = {key: tf.io.FixedLenFeature([], tf.string) for key in FEATURE_KEYS}
    parsed: dict[str, tf.Tensor] = tf.io.parse_example(serialized, features)
    return parsed


def decode_chip_tensor(encoded: tf.Tensor, *, chip_format: ChipFormat) -> tf.Tensor:
    """Decodes stored chips in TensorFlow (tf.data), pixel for pixel as ``decode_chip`` does.

    TensorFlow's default JPEG decoding (``tf.io.decode_image``, ``decode_jpeg`` without a DCT
    method) differs from Pillow's by about 1.4 grey levels on average and up to 17 (measured on
    q95 chips); ``INTEGER_ACCURATE`` gives the same pixels as Pillow.
    """
    import tensorflow as tf

    if chip_format == "jpeg":
        return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
    if chip_format == "png":
        return tf.io.decode_png(encoded, channels=3)
    raise ValueError(f"Unknown chip format {chip_format!r}; use one of {CHIP_FORMATS}.")


def encode_chip(chip: npt.NDArray[np.uint8], chip_format: ChipFormat) -> bytes:
    """Encodes an RGB chip ``[rows, cols, 3]``: JPEG at quality 95, or lossless PNG."""
    if chip_format not in CHIP_FORMATS:
        raise ValueError(f"Unknown chip format {chip_format!r}; use one of {CHIP_FORMATS}.")
    buffer = io.BytesIO()
    image = Image.fromarray(np.asarray(chip, dtype=np.uint8))
    if chip_format == "jpeg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_chip(encoded: bytes) -> npt.NDArray[np.uint8]:
    """Decodes a stored chip with Pillow into ``[rows, cols, 3]`` uint8 RGB (no TensorFlow)."""
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
