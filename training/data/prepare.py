"""``python -m training prepare``: labelled photos -> identity-disjoint splits -> aligned chips.

The steps, each logged:

1. Labels. CelebA: ``--images`` (``img_align_celeba``) with ``--identity-file``
   (``identity_CelebA.txt``); images listed but absent from the folder are not used, nor are images
   in the folder that the file does not list. Any other photos: ``--folder ROOT`` laid out as
   ``ROOT/<identity>/<image>``. ``--exclude-identities FILE`` (one identity per line, ``#``
   comments) drops those identities entirely, e.g. to keep evaluation people out of fine-tuning.
2. Splits, never sharing an identity. With CelebA's partition file (Kaggle's
   ``list_eval_partition.csv`` ``image_id,partition`` or the official ``list_eval_partition.txt``
   ``000001.jpg 0``; 0 train, 1 validation, 2 test; found next to the identity file or the images
   unless given or turned off) its splits are used, after a check: an identity found in several
   splits goes wholly to the split holding most of its images (ties: train, then validation), with
   a warning and a count; images the file does not list are not used. Otherwise the identities are
   shuffled with ``--split-seed`` and ``round(fraction x identities)`` of them go to test and to
   validation (at least one each when the fraction is above zero and there are three identities
   or more), the rest to train.
3. ``--limit N`` keeps at most N images per split, taking whole identities in an order shuffled
   with ``--split-seed`` (the last one may be cut short): a quick run that still has several
   images per identity.
4. Chips. Every image goes through the service's own steps: ``decode_image``, MTCNN detection
   (``FaceDetector`` with ``DetectorConfig``'s defaults, as the service), the largest face (the
   service's default face policy), and ``align_face`` with the template and chip size of
   ``--alignment-model``'s ``metadata.json``. Images with no face, or that cannot be decoded, are
   counted per split and listed in ``missing_faces.csv``. CelebA's aligned images downscaled by
   half (89x109) need no upscaling: MTCNN found 497 of the first 500 at their own size and 496
   upscaled twice.
5. Output: ``training.data.records`` describes the layout. Images are sorted by source within a
   split and cut into shards of ``--shard-size`` input images. ``--workers`` processes (a 'spawn'
   context: TensorFlow is not fork-safe; each builds its own detector once) chip them; this
   process writes each shard's TFRecord, then its sidecar. A rerun skips shards whose sidecar
   matches the configuration, so an interrupted run resumes. The fingerprint covers the rows that
   go in and everything that shapes a chip; an output holding another fingerprint is refused
   unless ``--overwrite``. ``manifest.json`` is written last, atomically.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from app.device import DeviceChoice
from training.data.records import (
    CHIP_FORMATS,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MISSING_FACES_FILE,
    SHARDS_DIR,
    SPLITS,
    ChipFormat,
    MissingFace,
    MissingReason,
    PreparedManifest,
    ShardSummary,
    SourceInfo,
    SplitInfo,
    serialize_example,
    shard_stem,
    write_json_atomically,
    write_manifest,
    write_text_atomically,
)

if TYPE_CHECKING:
    from app.pipeline.detect import DetectorConfig, FaceDetector
    from app.pipeline.metadata import AlignmentInfo, ModelMetadata

logger = logging.getLogger(__name__)

DEFAULT_ALIGNMENT_MODEL: Final = Path("models/dlib_resnet_v1/1")
DEFAULT_SHARD_SIZE: Final = 1000
DEFAULT_VALIDATION_FRACTION: Final = 0.1
DEFAULT_TEST_FRACTION: Final = 0.1
PARTITION_FILES: Final = ("list_eval_partition.csv", "list_eval_partition.txt")
PARTITION_CODES: Final = {"0": "train", "1": "validation", "2": "test"}
# The formats app.pipeline.decode accepts.
IMAGE_SUFFIXES: Final = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
NO_FACE: Final = "no_face"
CANNOT_DECODE: Final = "cannot_decode"
# Offline preparation reads the user's own files, so the upload limits are looser than the
# service's 10 MiB (a phone's JPEG can be larger); the pixel limit stays the service's.
MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024
# Images per task sent to a worker: small enough for a smooth progress bar and even load, large
# enough that same-size images (all of CelebA's) share one batched detector call.
CHUNK_SIZE: Final = 16
SplitMethod = Literal["partition_file", "seeded_by_identity"]
_SHARD_FILE = re.compile(r"^\.?(train|validation|test)-\d{5}\.(tfrecord|json)(\.partial)?$")


@dataclass(frozen=True)
class Example:
    """One input image: its split, its path relative to the images root, its identity."""

    split: str
    source: str
    identity: str


@dataclass(frozen=True)
class SplitAssignment:
    """Which split each image (by source) goes to, and what the assignment had to repair."""

    splits: dict[str, str]  # source -> split
    method: SplitMethod
    # Partition file only: identities found in several splits, and images moved to reunite them.
    repaired_identities: int = 0
    moved_images: int = 0
    unlisted_images: int = 0  # labelled images that the partition file does not list


# ---------------------------------------------------------------------------------------------
# Inputs


def read_partition_file(path: Path) -> dict[str, str]:
    """Reads CelebA's evaluation partition: image name -> ``train``/``validation``/``test``.

    Accepts Kaggle's CSV (header ``image_id,partition``, rows ``000001.jpg,0``) and the official
    text file (``000001.jpg 0``, any white space, no header). 0 is train, 1 validation, 2 test.
    """
    partition: dict[str, str] = {}
    with Path(path).open(encoding="utf-8-sig") as stream:
        for number, line in enumerate(stream, start=1):
            fields = [field.strip() for field in line.replace(",", " ").split()]
            if not fields:
                continue
            if not partition and [field.lower() for field in fields] == ["image_id", "partition"]:
                continue
            if len(fields) != 2 or fields[1] not in PARTITION_CODES:
                raise ValueError(
                    f"{path}, line {number}: expected an image and its partition 0, 1 or 2 "
                    f"(e.g. '000001.jpg,0' or '000001.jpg 0') but found {line.strip()!r}; fix or "
                    "remove the line."
                )
            partition[fields[0]] = PARTITION_CODES[fields[1]]
    if not partition:
        raise ValueError(f"{path} lists no images; give CelebA's list_eval_partition file.")
    return partition


def find_partition_file(*, images_dir: Path, identity_file: Path) -> Path | None:
    """CelebA's partition file next to the identity file, or one or two folders above the images.

    Kaggle's download keeps the images in ``img_align_celeba/img_align_celeba/`` and
    ``list_eval_partition.csv`` two levels up; the official one keeps them side by side.
    """
    folders = [identity_file.parent, images_dir.parent, images_dir.parent.parent]
    for folder in dict.fromkeys(folder.resolve() for folder in folders):
        for name in PARTITION_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def read_identity_list(path: Path) -> frozenset[str]:
    """Identities to leave out: one per line; blank lines and ``#`` comments are skipped."""
    identities = set()
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        identity = line.split("#", 1)[0].strip()
        if identity:
            identities.add(identity)
    return frozenset(identities)


def read_folder(root: Path) -> dict[str, str]:
    """Labels of a ``ROOT/<identity>/<image>`` folder: relative source path -> identity.

    Files whose suffix no decoder of the service reads, and hidden files and folders, are skipped.
    """
    labels: dict[str, str] = {}
    loose = 0
    for identity_dir in sorted(Path(root).iterdir()):
        if identity_dir.name.startswith("."):
            continue
        if not identity_dir.is_dir():
            loose += 1
            continue
        for image in sorted(identity_dir.iterdir()):
            if (
                image.is_file()
                and not image.name.startswith(".")
                and image.suffix.lower() in IMAGE_SUFFIXES
            ):
                labels[f"{identity_dir.name}/{image.name}"] = identity_dir.name
    if loose:
        logger.warning("%s: %d files outside an identity folder are not used", root, loose)
    if not labels:
        raise ValueError(
            f"{root} holds no images laid out as ROOT/<identity>/<image>; put each person's "
            "photos in a folder named after them."
        )
    logger.info("%s: %d images of %d identities", root, len(labels), len(set(labels.values())))
    return labels


def read_celeba(images_dir: Path, identity_file: Path) -> dict[str, str]:
    """Labels of CelebA images present in ``images_dir``: file name -> identity."""
    from training.pairs import read_identity_file

    labels = {
        path.name: identity
        for path, identity in read_identity_file(identity_file, images_dir=images_dir).items()
    }
    unlisted = sum(
        1
        for entry in os.scandir(images_dir)
        if entry.is_file() and entry.name not in labels and not entry.name.startswith(".")
    )
    if unlisted:
        logger.warning(
            "%s: %d files are not in %s and are not used", images_dir, unlisted, identity_file
        )
    if not labels:
        raise ValueError(
            f"None of the images in {images_dir} is listed in {identity_file}; check that the "
            "identity file belongs to these images."
        )
    return labels


# ---------------------------------------------------------------------------------------------
# Splits


def split_by_partition(labels: Mapping[str, str], partition: Mapping[str, str]) -> SplitAssignment:
    """Follows a partition file, made identity-disjoint (see the module docstring)."""
    listed = {source: partition[source] for source in labels if source in partition}
    unlisted = len(labels) - len(listed)
    if unlisted:
        logger.warning(
            "%d labelled images are not in the partition file and are not used", unlisted
        )
    counts: dict[str, Counter[str]] = {}
    for source, split in listed.items():
        counts.setdefault(labels[source], Counter())[split] += 1
    home: dict[str, str] = {}
    repaired = 0
    for identity, per_split in counts.items():
        # Most images first; ties go to the earlier split in SPLITS order.
        home[identity] = max(SPLITS, key=lambda split: (per_split[split], -SPLITS.index(split)))
        if len(per_split) > 1:
            repaired += 1
    splits = {source: home[labels[source]] for source in listed}
    moved = sum(1 for source, split in listed.items() if splits[source] != split)
    if repaired:
        logger.warning(
            "The partition file puts %d identities in several splits; each now goes wholly to the "
            "split holding most of its images (%d images moved)",
            repaired,
            moved,
        )
    return SplitAssignment(
        splits=splits,
        method="partition_file",
        repaired_identities=repaired,
        moved_images=moved,
        unlisted_images=unlisted,
    )


def split_identities(
    identities: Collection[str], *, validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Seeded identity -> split (see the module docstring); the same for the same set and seed."""
    _check_fractions(validation_fraction, test_fraction)
    ordered = sorted(set(identities))
    total = len(ordered)

    def share(fraction: float) -> int:
        count = round(fraction * total)
        return max(count, 1) if fraction > 0 and total >= 3 else count

    test_count, validation_count = share(test_fraction), share(validation_fraction)
    if total > 0 and test_count + validation_count >= total:
        raise ValueError(
            f"{total} identities are too few for --validation-fraction {validation_fraction} and "
            f"--test-fraction {test_fraction}: nothing would be left to train on; lower the "
            "fractions or add identities."
        )
    order = np.random.default_rng(seed).permutation(total)
    assignment: dict[str, str] = {}
    for rank, index in enumerate(order):
        if rank < test_count:
            split = "test"
        elif rank < test_count + validation_count:
            split = "validation"
        else:
            split = "train"
        assignment[ordered[index]] = split
    return assignment


def split_by_identity_seeded(
    labels: Mapping[str, str], *, validation_fraction: float, test_fraction: float, seed: int
) -> SplitAssignment:
    """Seeded identity-disjoint split of labelled images (source -> identity)."""
    home = split_identities(
        labels.values(),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    return SplitAssignment(
        splits={source: home[identity] for source, identity in labels.items()},
        method="seeded_by_identity",
    )


def limit_examples(examples: Sequence[Example], *, limit: int, seed: int) -> list[Example]:
    """At most ``limit`` images per split: whole identities in seeded order, the last cut short."""
    rng = np.random.default_rng(seed)
    kept: list[Example] = []
    for split in SPLITS:
        by_identity: dict[str, list[Example]] = {}
        for example in sorted(
            (example for example in examples if example.split == split),
            key=lambda example: example.source,
        ):
            by_identity.setdefault(example.identity, []).append(example)
        identities = sorted(by_identity)
        room = limit
        for index in rng.permutation(len(identities)):
            if room == 0:
                break
            taken = by_identity[identities[index]][:room]
            kept.extend(taken)
            room -= len(taken)
    return kept


def _check_fractions(validation_fraction: float, test_fraction: float) -> None:
    for name, value in (
        ("--validation-fraction", validation_fraction),
        ("--test-fraction", test_fraction),
    ):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be at least 0 and below 1, got {value}.")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"--validation-fraction {validation_fraction} and --test-fraction {test_fraction} "
            "leave nothing to train on; make their sum smaller than 1."
        )


# ---------------------------------------------------------------------------------------------
# Fingerprints


def dataset_fingerprint(
    examples: Iterable[Example],
    *,
    chip_size: tuple[int, int],
    chip_format: str,
    template: Sequence[Sequence[float]],
    detector: Mapping[str, object],
) -> str:
    """SHA-256 over the sorted (split, source, identity) rows and everything that shapes a chip.

    The images' root is left out, so moving the data does not invalidate a prepared dataset.
    """
    digest = hashlib.sha256()
    header = {
        "format_version": FORMAT_VERSION,
        "chip_size": list(chip_size),
        "chip_format": chip_format,
        "template": [[float(value) for value in point] for point in template],
        "detector": dict(detector),
    }
    digest.update(json.dumps(header, sort_keys=True).encode("utf-8"))
    rows = sorted((example.split, example.source, example.identity) for example in examples)
    for row in rows:
        digest.update(b"\n" + json.dumps(row).encode("utf-8"))
    return digest.hexdigest()


def _shard_fingerprint(fingerprint: str, examples: Sequence[Example]) -> str:
    digest = hashlib.sha256(fingerprint.encode("ascii"))
    for example in examples:
        digest.update(b"\n" + json.dumps([example.source, example.identity]).encode("utf-8"))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class PrepareConfig:
    """The ``prepare`` command's arguments, checked; ``prepare_dataset`` validates through it."""

    output_dir: Path
    images_dir: Path | None
    identity_file: Path | None
    partition_file: Path | None
    folder: Path | None
    alignment_model: Path
    validation_fraction: float
    test_fraction: float
    split_seed: int
    exclude_identities: Path | None
    limit: int | None
    workers: int
    shard_size: int
    chip_format: ChipFormat
    overwrite: bool
    device: DeviceChoice

    def __post_init__(self) -> None:
        if self.folder is not None:
            if self.images_dir is not None or self.identity_file is not None:
                raise ValueError(
                    "Give either --folder, or --images with --identity-file, not both."
                )
            if self.partition_file is not None:
                raise ValueError(
                    "--partition-file goes with --images and --identity-file (CelebA); a --folder "
                    "is split by identity with --split-seed."
                )
            if not self.folder.is_dir():
                raise ValueError(
                    f"--folder {self.folder} is not a folder; give the ROOT of "
                    "ROOT/<identity>/<image>."
                )
        else:
            if self.images_dir is None or self.identity_file is None:
                raise ValueError(
                    "Give the photos: --images with --identity-file (CelebA's img_align_celeba and "
                    "identity_CelebA.txt), or --folder laid out as ROOT/<identity>/<image>."
                )
            if not self.images_dir.is_dir():
                raise ValueError(f"--images {self.images_dir} is not a folder of images.")
            if not self.identity_file.is_file():
                raise ValueError(
                    f"--identity-file {self.identity_file} is not a file (identity_CelebA.txt)."
                )
            if self.partition_file is not None and not self.partition_file.is_file():
                raise ValueError(
                    f"--partition-file {self.partition_file} is not a file "
                    "(list_eval_partition.csv or .txt); omit it to split by identity."
                )
        if not (self.alignment_model / "metadata.json").is_file():
            raise ValueError(
                f"--alignment-model {self.alignment_model} holds no metadata.json; give a model "
                "folder such as models/dlib_resnet_v1/1 (build it with `make model`)."
            )
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"--output {self.output_dir} is a file; give a folder.")
        _check_fractions(self.validation_fraction, self.test_fraction)
        if self.exclude_identities is not None and not self.exclude_identities.is_file():
            raise ValueError(
                f"--exclude-identities {self.exclude_identities} is not a file (one identity per "
                "line)."
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1 image per split, got {self.limit}.")
        if self.workers < 0:
            raise ValueError(
                f"--workers must be 0 (work in this process) or more, got {self.workers}."
            )
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be at least 1 image, got {self.shard_size}.")
        if self.chip_format not in CHIP_FORMATS:
            raise ValueError(
                f"--chip-format must be one of {', '.join(CHIP_FORMATS)}, got {self.chip_format!r}."
            )
        if self.device not in get_args(DeviceChoice):
            raise ValueError(
                f"--device must be one of {', '.join(get_args(DeviceChoice))}, got {self.device!r}."
            )


def _prepare(args: argparse.Namespace) -> None:
    """The ``prepare`` command: resolves the partition file, then calls ``prepare_dataset``."""
    partition_file: Path | None = args.partition_file
    if args.no_partition_file:
        if partition_file is not None:
            raise ValueError("Give --partition-file or --no-partition-file, not both.")
    elif partition_file is None and args.images is not None and args.identity_file is not None:
        partition_file = find_partition_file(
            images_dir=args.images, identity_file=args.identity_file
        )
        if partition_file is not None:
            logger.info(
                "Using the partition file %s (--no-partition-file splits by identity instead)",
                partition_file,
            )
    config = PrepareConfig(
        output_dir=args.output,
        images_dir=args.images,
        identity_file=args.identity_file,
        partition_file=partition_file,
        folder=args.folder,
        alignment_model=args.alignment_model,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        exclude_identities=args.exclude_identities,
        limit=args.limit,
        workers=args.workers,
        shard_size=args.shard_size,
        chip_format=args.chip_format,
        overwrite=args.overwrite,
        device=args.device,
    )
    manifest = prepare_dataset(
        output_dir=config.output_dir,
        images_dir=config.images_dir,
        identity_file=config.identity_file,
        partition_file=config.partition_file,
        folder=config.folder,
        alignment_model=config.alignment_model,
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        split_seed=config.split_seed,
        exclude_identities=config.exclude_identities,
        limit=config.limit,
        workers=config.workers,
        shard_size=config.shard_size,
        chip_format=config.chip_format,
        overwrite=config.overwrite,
        device=config.device,
    )
    logger.info(
        "Dataset ready in %s (fingerprint %s)", config.output_dir, manifest.fingerprint[:12]
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the ``prepare`` command to ``python -m training``'s sub-commands."""
    prepare = commands.add_parser(
        "prepare",
        help="align the faces of labelled photos into identity-disjoint TFRecord splits",
        description="Splits labelled photos by identity into train, validation and test (CelebA's "
        "partition file when there is one, made identity-disjoint; else seeded), cuts each "
        "image's largest face into an aligned chip exactly as the service does, and writes "
        "TFRecord shards with manifest.json. Resumes an interrupted run; refuses an output "
        "prepared differently unless --overwrite.",
    )
    prepare.add_argument("--output", type=Path, required=True, help="the dataset folder to write")
    prepare.add_argument("--images", type=Path, default=None, help="CelebA's img_align_celeba")
    prepare.add_argument(
        "--identity-file", type=Path, default=None, help="identity_CelebA.txt for --images"
    )
    prepare.add_argument(
        "--partition-file",
        type=Path,
        default=None,
        help="list_eval_partition.csv or .txt (default: found next to the identity file or "
        "one or two folders above the images)",
    )
    prepare.add_argument(
        "--no-partition-file",
        action="store_true",
        help="ignore any partition file and split by identity with --split-seed",
    )
    prepare.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="instead of --images/--identity-file: photos laid out as ROOT/<identity>/<image>",
    )
    prepare.add_argument(
        "--alignment-model",
        type=Path,
        default=DEFAULT_ALIGNMENT_MODEL,
        help="model folder whose metadata.json gives the template and chip size",
    )
    prepare.add_argument(
        "--validation-fraction",
        type=float,
        default=DEFAULT_VALIDATION_FRACTION,
        help="share of identities for validation in a seeded split",
    )
    prepare.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="share of identities for test in a seeded split",
    )
    prepare.add_argument(
        "--split-seed", type=int, default=0, help="seeds the identity split and --limit"
    )
    prepare.add_argument(
        "--exclude-identities",
        type=Path,
        default=None,
        help="file of identities (one per line) to leave out entirely",
    )
    prepare.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many images per split (whole identities, seeded), for quick runs",
    )
    prepare.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per CPU; 0: work in this process)",
    )
    prepare.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="input images per shard"
    )
    prepare.add_argument(
        "--chip-format",
        choices=CHIP_FORMATS,
        default="jpeg",
        help="jpeg (quality 95) or png (lossless, about 3.5 times larger)",
    )
    prepare.add_argument(
        "--overwrite", action="store_true", help="replace an output prepared differently"
    )
    prepare.add_argument(
        "--device",
        choices=get_args(DeviceChoice),
        default="auto",
        help="where detection runs (auto: a GPU when there is one)",
    )
    prepare.set_defaults(handler=_prepare)


# ---------------------------------------------------------------------------------------------
# The library function


def prepare_dataset(
    *,
    output_dir: Path,
    images_dir: Path | None = None,
    identity_file: Path | None = None,
    partition_file: Path | None = None,
    folder: Path | None = None,
    alignment_model: Path = DEFAULT_ALIGNMENT_MODEL,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
    exclude_identities: Path | None = None,
    limit: int | None = None,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chip_format: ChipFormat = "jpeg",
    overwrite: bool = False,
    device: DeviceChoice = "auto",
) -> PreparedManifest:
    """Prepares (or resumes preparing) a dataset in ``output_dir``; returns its manifest.

    CelebA: ``images_dir`` + ``identity_file`` (+ ``partition_file`` for its splits; None splits
    by identity with ``split_seed``). Any photos: ``folder`` as ``ROOT/<identity>/<image>``.
    ``workers`` None uses every CPU; 0 works in this process. Raises ValueError for bad arguments
    and FileExistsError when ``output_dir`` holds a dataset prepared differently and ``overwrite``
    is false. See the module docstring for the steps.
    """
    config = PrepareConfig(
        output_dir=Path(output_dir),
        images_dir=None if images_dir is None else Path(images_dir),
        identity_file=None if identity_file is None else Path(identity_file),
        partition_file=None if partition_file is None else Path(partition_file),
        folder=None if folder is None else Path(folder),
        alignment_model=Path(alignment_model),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        exclude_identities=None if exclude_identities is None else Path(exclude_identities),
        limit=limit,
        workers=(os.cpu_count() or 1) if workers is None else workers,
        shard_size=shard_size,
        chip_format=chip_format,
        overwrite=overwrite,
        device=device,
    )
    from app.pipeline.detect import DetectorConfig

    metadata, alignment = _alignment_metadata(config.alignment_model)
    detector_config = DetectorConfig()
    detector_settings = {
        field.name: getattr(detector_config, field.name)
        for field in dataclasses.fields(detector_config)
        # Where detection runs does not change what it finds.
        if field.name != "device"
    }

    examples, assignment, source, excluded = _gather_examples(config)
    images_root = Path(source.images)
    fingerprint = dataset_fingerprint(
        examples,
        chip_size=metadata.input_size,
        chip_format=config.chip_format,
        template=alignment.template,
        detector=detector_settings,
    )
    shards = _plan_shards(examples, shard_size=config.shard_size, fingerprint=fingerprint)
    output = config.output_dir
    shards_dir = output / SHARDS_DIR
    _claim_output(output, fingerprint=fingerprint, overwrite=config.overwrite)
    shards_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_files(shards_dir, keep={shard.stem for shard in shards})

    pending = [shard for shard in shards if _done_summary(shards_dir, shard) is None]
    if len(pending) < len(shards):
        logger.info(
            "Resuming: %d of %d shards are already done", len(shards) - len(pending), len(shards)
        )
    manifest_path = output / MANIFEST_FILE
    if pending:
        # A manifest marks a complete dataset: gone until every shard is done again.
        manifest_path.unlink(missing_ok=True)
        settings = _ChipSettings(
            template=tuple((float(x), float(y)) for x, y in alignment.template),
            chip_size=metadata.input_size,
            chip_format=config.chip_format,
            detector=detector_config,
            device=config.device,
        )
        _chip_shards(
            pending,
            images_root=images_root,
            settings=settings,
            shards_dir=shards_dir,
            workers=config.workers,
        )

    summaries = [_done_summary(shards_dir, shard) for shard in shards]
    if any(summary is None for summary in summaries):
        raise RuntimeError("A shard was not finished; run the command again to resume.")
    done = [summary for summary in summaries if summary is not None]
    if not pending and manifest_path.is_file() and (output / MISSING_FACES_FILE).is_file():
        existing = _read_existing_manifest(manifest_path)
        if existing is not None and existing.fingerprint == fingerprint:
            logger.info("%s is up to date (fingerprint %s)", output, fingerprint[:12])
            return existing

    _write_missing_faces(output / MISSING_FACES_FILE, done)
    manifest = PreparedManifest(
        chip_size=metadata.input_size,
        chip_format=config.chip_format,
        alignment=alignment,
        alignment_model=str(config.alignment_model),
        detector=detector_settings,
        source=source,
        split_method=assignment.method,
        split_seed=(
            config.split_seed
            if assignment.method == "seeded_by_identity" or config.limit is not None
            else None
        ),
        splits={split: _split_info(split, done) for split in SPLITS},
        excluded_identities=excluded,
        fingerprint=fingerprint,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        frameworks=_frameworks(),
    )
    write_manifest(output, manifest)
    _log_summary(output, manifest)
    return manifest


def _log_summary(output: Path, manifest: PreparedManifest) -> None:
    for split, info in manifest.splits.items():
        logger.info(
            "%s: %d images -> %d chips of %d identities; %d without a usable face",
            split,
            info.images,
            info.chips,
            info.identities,
            info.missing_faces,
        )
    total_images = sum(info.images for info in manifest.splits.values())
    total_chips = sum(info.chips for info in manifest.splits.values())
    logger.info(
        "Prepared %s: faces found in %d of %d images (%.1f%%)",
        output,
        total_chips,
        total_images,
        100.0 * total_chips / max(total_images, 1),
    )


def _alignment_metadata(model_dir: Path) -> tuple[ModelMetadata, AlignmentInfo]:
    from app.pipeline.errors import MetadataError
    from app.pipeline.metadata import read_metadata

    try:
        metadata = read_metadata(model_dir)
    except MetadataError as error:
        raise ValueError(f"--alignment-model: {error.detail}") from None
    if metadata.alignment is None:
        raise ValueError(
            f"{model_dir}/metadata.json has no alignment template; give a model folder exported "
            "with one, such as models/dlib_resnet_v1/1."
        )
    return metadata, metadata.alignment


def _gather_examples(
    config: PrepareConfig,
) -> tuple[list[Example], SplitAssignment, SourceInfo, int]:
    if config.folder is not None:
        labels = read_folder(config.folder)
        source = SourceInfo(kind="folder", images=str(config.folder))
    elif config.images_dir is not None and config.identity_file is not None:
        labels = read_celeba(config.images_dir, config.identity_file)
        source = SourceInfo(
            kind="celeba",
            images=str(config.images_dir),
            identity_file=str(config.identity_file),
            partition_file=None if config.partition_file is None else str(config.partition_file),
        )
    else:
        raise ValueError("Give --folder, or --images with --identity-file.")

    excluded = 0
    if config.exclude_identities is not None:
        listed = read_identity_list(config.exclude_identities)
        present = set(labels.values()) & listed
        excluded = len(present)
        labels = {path: identity for path, identity in labels.items() if identity not in listed}
        logger.info(
            "Excluded %d identities (%d listed in %s)",
            excluded,
            len(listed),
            config.exclude_identities,
        )
        if not labels:
            raise ValueError(
                f"Every identity is listed in --exclude-identities {config.exclude_identities}; "
                "nothing is left to prepare."
            )

    if config.partition_file is not None:
        assignment = split_by_partition(labels, read_partition_file(config.partition_file))
    else:
        assignment = split_by_identity_seeded(
            labels,
            validation_fraction=config.validation_fraction,
            test_fraction=config.test_fraction,
            seed=config.split_seed,
        )
    examples = [
        Example(split=split, source=path, identity=labels[path])
        for path, split in assignment.splits.items()
    ]
    if config.limit is not None:
        examples = limit_examples(examples, limit=config.limit, seed=config.split_seed)
    if not examples:
        raise ValueError(
            "No image is left to prepare; check the partition file and --exclude-identities."
        )
    return examples, assignment, source, excluded


# ---------------------------------------------------------------------------------------------
# Shards on disk


@dataclass(frozen=True)
class _Shard:
    split: str
    index: int
    examples: tuple[Example, ...]
    fingerprint: str  # the dataset's
    shard_fingerprint: str

    @property
    def stem(self) -> str:
        return shard_stem(self.split, self.index)


def _plan_shards(examples: Sequence[Example], *, shard_size: int, fingerprint: str) -> list[_Shard]:
    shards: list[_Shard] = []
    for split in SPLITS:
        ordered = sorted(
            (example for example in examples if example.split == split),
            key=lambda example: example.source,
        )
        for index, start in enumerate(range(0, len(ordered), shard_size)):
            members = tuple(ordered[start : start + shard_size])
            shards.append(
                _Shard(
                    split=split,
                    index=index,
                    examples=members,
                    fingerprint=fingerprint,
                    shard_fingerprint=_shard_fingerprint(fingerprint, members),
                )
            )
    return shards


def _read_summary(path: Path) -> ShardSummary | None:
    try:
        return ShardSummary.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _done_summary(shards_dir: Path, shard: _Shard) -> ShardSummary | None:
    """The shard's sidecar when it marks this very shard done; None when it must be (re)done."""
    summary = _read_summary(shards_dir / f"{shard.stem}.json")
    if (
        summary is None
        or summary.shard_fingerprint != shard.shard_fingerprint
        or not (shards_dir / summary.file).is_file()
    ):
        return None
    return summary


def _read_existing_manifest(path: Path) -> PreparedManifest | None:
    try:
        return PreparedManifest.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _claim_output(output: Path, *, fingerprint: str, overwrite: bool) -> None:
    """Refuses an output prepared with another configuration, or clears it with ``overwrite``."""
    shards_dir = output / SHARDS_DIR
    manifest_path = output / MANIFEST_FILE
    found: set[str] = set()
    if manifest_path.is_file():
        existing = _read_existing_manifest(manifest_path)
        found.add(existing.fingerprint if existing is not None else "unreadable manifest")
    if shards_dir.is_dir():
        for sidecar in shards_dir.glob("*.json"):
            summary = _read_summary(sidecar)
            if summary is not None:
                found.add(summary.fingerprint)
    others = found - {fingerprint}
    if not others:
        return
    if not overwrite:
        raise FileExistsError(
            f"{output} holds a dataset prepared with another configuration (fingerprint "
            f"{sorted(others)[0][:12]}, now {fingerprint[:12]}: other images, splits, chip format "
            "or template); pass --overwrite to replace it, or choose another --output."
        )
    logger.warning("Replacing the dataset prepared differently in %s (--overwrite)", output)
    shutil.rmtree(shards_dir, ignore_errors=True)
    manifest_path.unlink(missing_ok=True)
    (output / MISSING_FACES_FILE).unlink(missing_ok=True)


def _remove_stale_files(shards_dir: Path, *, keep: Collection[str]) -> None:
    """Deletes shard files of this dataset that the current plan has no place for.

    They come from a run with another --shard-size or --limit, or from an interrupted write.
    """
    for path in shards_dir.iterdir():
        match = _SHARD_FILE.match(path.name)
        if match is None:
            continue
        stem = path.name.lstrip(".").split(".", 1)[0]
        if stem not in keep or path.name.endswith(".partial"):
            path.unlink()


def _write_missing_faces(path: Path, summaries: Sequence[ShardSummary]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("split", "source", "reason"))
    for summary in summaries:
        writer.writerows((summary.split, face.source, face.reason) for face in summary.missing)
    write_text_atomically(path, buffer.getvalue())


def _split_info(split: str, summaries: Sequence[ShardSummary]) -> SplitInfo:
    mine = [summary for summary in summaries if summary.split == split]
    identities = {identity for summary in mine for identity in summary.identities}
    return SplitInfo(
        images=sum(summary.images for summary in mine),
        chips=sum(summary.chips for summary in mine),
        identities=len(identities),
        missing_faces=sum(len(summary.missing) for summary in mine),
        shards=tuple(summary.file for summary in mine),
    )


def _frameworks() -> dict[str, str]:
    from importlib import metadata

    versions: dict[str, str] = {}
    for package in ("tensorflow", "mtcnn", "pillow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


# ---------------------------------------------------------------------------------------------
# Chipping: detection and alignment, in this process or in workers


@dataclass(frozen=True)
class _ChipSettings:
    template: tuple[tuple[float, float], ...]
    chip_size: tuple[int, int]
    chip_format: ChipFormat
    detector: DetectorConfig
    device: DeviceChoice


# A chip's encoded bytes, or why there is none.
_Outcome = tuple[bytes | None, MissingReason | None]


class _Chipper:
    """Decode -> detect -> largest face -> align -> encode, as the service does up to the chip."""

    def __init__(self, settings: _ChipSettings, detector: FaceDetector) -> None:
        self.settings = settings
        self.detector = detector
        self.template = np.asarray(settings.template, dtype=np.float64)

    def chip(self, paths: Sequence[str]) -> list[_Outcome]:
        from app.pipeline.align import align_face
        from app.pipeline.decode import decode_image
        from app.pipeline.errors import InputError
        from training.data.records import encode_chip

        outcomes: list[_Outcome] = [(None, CANNOT_DECODE)] * len(paths)
        decoded: list[npt.NDArray[np.uint8]] = []
        positions: list[int] = []
        for position, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
                decoded.append(decode_image(data, max_bytes=MAX_IMAGE_BYTES).pixels)
            except (OSError, InputError) as error:
                logger.debug("%s cannot be decoded: %s", path, error)
                continue
            positions.append(position)
        # One call for the chunk: the detector batches same-size images (all of CelebA's).
        for position, image, faces in zip(
            positions, decoded, self.detector.detect(decoded), strict=True
        ):
            if not faces:
                outcomes[position] = (None, NO_FACE)
                continue
            # faces[0] is the largest face: the service's default face policy.
            chip = align_face(
                image, faces[0].landmarks, template=self.template, size=self.settings.chip_size
            )
            outcomes[position] = (encode_chip(chip, self.settings.chip_format), None)
        return outcomes


@cache
def _local_detector(config: DetectorConfig, device: DeviceChoice) -> FaceDetector:
    """This process's detector, built once: MTCNN's set-up and graph tracing take seconds."""
    from app.device import configure_device
    from app.pipeline.detect import FaceDetector

    chosen = configure_device(device)
    return FaceDetector(dataclasses.replace(config, device=chosen.tensorflow_name))


_worker_chipper: _Chipper | None = None


def _start_worker(settings: _ChipSettings, threads: int) -> None:
    """Runs once in each worker process, before any TensorFlow work."""
    global _worker_chipper
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Several processes each using every core would only contend for them.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    detector = _local_detector(settings.detector, settings.device)
    _worker_chipper = _Chipper(settings, detector)


def _chip_in_worker(paths: list[str]) -> list[_Outcome]:
    if _worker_chipper is None:
        raise RuntimeError("The worker was not started with its settings.")
    return _worker_chipper.chip(paths)


def _chunks(shard: _Shard, root: Path) -> list[list[str]]:
    paths = [str(root / example.source) for example in shard.examples]
    return [paths[start : start + CHUNK_SIZE] for start in range(0, len(paths), CHUNK_SIZE)]


def _chip_shards(
    shards: Sequence[_Shard],
    *,
    images_root: Path,
    settings: _ChipSettings,
    shards_dir: Path,
    workers: int,
) -> None:
    # tqdm ships no type hints; pyproject.toml lists it with the other untyped packages.
    from tqdm import tqdm

    tasks = [chunk for shard in shards for chunk in _chunks(shard, images_root)]
    total = sum(len(shard.examples) for shard in shards)
    workers = min(workers, len(tasks))
    with tqdm(total=total, desc="Aligning faces", unit="image") as progress:
        if workers == 0:
            chipper = _Chipper(settings, _local_detector(settings.detector, settings.device))
            _write_shards(shards, map(chipper.chip, tasks), shards_dir, progress)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        threads = max(1, (os.cpu_count() or 1) // workers)
        logger.info("Starting %d worker processes", workers)
        # Not multiprocessing.Pool: it replaces a worker that fails to start, forever, where this
        # pool reports it (BrokenProcessPool).
        executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(settings, threads),
        )
        try:
            _write_shards(shards, executor.map(_chip_in_worker, tasks), shards_dir, progress)
        except BrokenProcessPool as error:
            executor.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(
                "A worker process died (its error, if any, is printed above); rerun with "
                "--workers 0 to see the error in this process. Finished shards are kept."
            ) from error
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown()


class _Progress(Protocol):
    def update(self, n: int) -> object: ...


def _write_shards(
    shards: Sequence[_Shard],
    outcomes: Iterator[list[_Outcome]],
    shards_dir: Path,
    progress: _Progress,
) -> None:
    """Writes each shard's TFRecord (then renames it into place), then its sidecar."""
    import tensorflow as tf

    for shard in shards:
        record_file = shards_dir / f"{shard.stem}.tfrecord"
        staging = shards_dir / f".{record_file.name}.partial"
        identities: Counter[str] = Counter()
        missing: list[MissingFace] = []
        with tf.io.TFRecordWriter(str(staging)) as writer:
            # Outcomes come in the order of _chunks: this shard's images, CHUNK_SIZE at a time.
            for start in range(0, len(shard.examples), CHUNK_SIZE):
                members = shard.examples[start : start + CHUNK_SIZE]
                chunk = next(outcomes)
                for (chip, reason), example in zip(chunk, members, strict=True):
                    if chip is None:
                        missing.append(MissingFace(source=example.source, reason=reason or NO_FACE))
                        continue
                    writer.write(
                        serialize_example(
                            chip=chip, identity=example.identity, source=example.source
                        )
                    )
                    identities[example.identity] += 1
                progress.update(len(chunk))
        os.replace(staging, record_file)
        summary = ShardSummary(
            fingerprint=shard.fingerprint,
            shard_fingerprint=shard.shard_fingerprint,
            split=shard.split,
            index=shard.index,
            file=record_file.name,
            images=len(shard.examples),
            chips=sum(identities.values()),
            identities=dict(sorted(identities.items())),
            missing=tuple(missing),
        )
        write_json_atomically(shards_dir / f"{shard.stem}.json", summary.model_dump(mode="json"))
        logger.debug("%s: %d chips, %d missing", shard.stem, summary.chips, len(missing))
