"""A tiny dataset in CelebA's layout, made from the real face that scikit-image ships.

``make_tiny_celeba`` writes what ``python -m training prepare`` reads from a CelebA download:

- ``img_align_celeba/000001.jpg ...``: 178x218 JPEGs, CelebA's aligned size;
- ``identity_CelebA.txt``: the header ``image identity``, then ``000001.jpg 7`` per line;
- ``list_eval_partition.csv`` (Kaggle's ``image_id,partition``, 0 train, 1 validation, 2 test) or
  ``list_eval_partition.txt`` (the official ``000001.jpg 0``), split by identity.

Every "identity" is the astronaut (``skimage.data.astronaut()``) seen through its own colour mix,
background colour, crop and stretch of the face, so identities look different from each other and
stay different after alignment (a stretch is not undone by a similarity transform). Each image of
an identity then gets a small random shift, scale, rotation, brightness change and sometimes a
mirror. MTCNN finds the face in every face image (checked by the tests). No-face images are smooth
colour gradients with noise; corrupt images are bytes that are not an image. Both are labelled
with train identities, as a real identity file would list them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

IMAGE_SIZE = (218, 178)  # rows, cols: CelebA's img_align_celeba
# The astronaut's face in skimage.data.astronaut() (512x512): MTCNN's box is about x 182-265,
# y 64-171; the crop is centred between the eyes and the mouth.
_FACE_CENTRE = (224.0, 118.0)
# Source pixels per output pixel: the face (about 83 px wide) becomes about 70 px wide, close to
# the faces of CelebA's aligned images.
_BASE_SCALE = 1.2
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class TinyCeleba:
    """What ``make_tiny_celeba`` wrote; names are file names inside ``images_dir``."""

    root: Path
    images_dir: Path
    identity_file: Path
    partition_file: Path
    labels: dict[str, str]  # image name -> identity
    partition: dict[str, str]  # image name -> split name
    face_images: tuple[str, ...]
    no_face_images: tuple[str, ...]
    corrupt_images: tuple[str, ...]

    @property
    def identities(self) -> int:
        return len(set(self.labels.values()))

    @property
    def images(self) -> int:
        return len(self.labels)

    def split_images(self, split: str) -> list[str]:
        return sorted(name for name, where in self.partition.items() if where == split)


def astronaut() -> npt.NDArray[np.uint8]:
    from skimage import data

    return np.asarray(data.astronaut(), dtype=np.uint8)


def make_tiny_celeba(
    root: Path,
    *,
    identities: int = 6,
    images_per_identity: int = 5,
    no_face_images: int = 2,
    corrupt_images: int = 0,
    splits: tuple[int, int, int] | None = None,
    partition_format: Literal["kaggle", "official"] = "kaggle",
    seed: int = 0,
) -> TinyCeleba:
    """Writes the dataset under ``root`` (created if needed) and describes it.

    ``splits`` is the number of identities in train, validation and test (default: one each for
    validation and test, the rest train). Image names are numbered in a seeded random order, so
    identities interleave as in CelebA.
    """
    if identities < 1 or images_per_identity < 1:
        raise ValueError("Give at least one identity with at least one image.")
    if splits is None:
        held_out = 1 if identities >= 3 else 0
        splits = (identities - 2 * held_out, held_out, held_out)
    if sum(splits) != identities or min(splits) < 0:
        raise ValueError(f"splits {splits} must be non-negative and add up to {identities}.")
    rng = np.random.default_rng(seed)
    source = astronaut()
    # CelebA-like identity numbers, distinct.
    numbers = sorted(int(value) for value in rng.choice(np.arange(1, 10178), identities, False))
    split_of = [
        split for split, count in zip(SPLIT_CODES, splits, strict=True) for _ in range(count)
    ]
    looks = [_identity_look(rng) for _ in range(identities)]

    kinds: list[tuple[str, int]] = [
        ("face", index) for index in range(identities) for _ in range(images_per_identity)
    ]
    # Images without a chip are labelled with train identities, as a real identity file would.
    train = [index for index, split in enumerate(split_of) if split == "train"] or [0]
    kinds += [("no_face", train[index % len(train)]) for index in range(no_face_images)]
    kinds += [("corrupt", train[(index + 1) % len(train)]) for index in range(corrupt_images)]
    order = rng.permutation(len(kinds))

    images_dir = root / "img_align_celeba"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels: dict[str, str] = {}
    partition: dict[str, str] = {}
    groups: dict[str, list[str]] = {"face": [], "no_face": [], "corrupt": []}
    for number, position in enumerate(order, start=1):
        kind, identity = kinds[position]
        name = f"{number:06d}.jpg"
        if kind == "face":
            data = _encode(_face_image(source, looks[identity], rng))
        elif kind == "no_face":
            data = _encode(_blank_image(rng))
        else:
            data = b"this is not an image " + bytes(rng.integers(0, 256, 64, dtype=np.uint8))
        (images_dir / name).write_bytes(data)
        labels[name] = str(numbers[identity])
        partition[name] = split_of[identity]
        groups[kind].append(name)

    identity_file = root / "identity_CelebA.txt"
    identity_file.write_text(
        "image identity\n" + "".join(f"{name} {who}\n" for name, who in labels.items()),
        encoding="utf-8",
    )
    if partition_format == "kaggle":
        partition_file = root / "list_eval_partition.csv"
        lines = ["image_id,partition"]
        lines += [f"{name},{SPLIT_CODES[split]}" for name, split in partition.items()]
    else:
        partition_file = root / "list_eval_partition.txt"
        lines = [f"{name} {SPLIT_CODES[split]}" for name, split in partition.items()]
    partition_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return TinyCeleba(
        root=root,
        images_dir=images_dir,
        identity_file=identity_file,
        partition_file=partition_file,
        labels=labels,
        partition=partition,
        face_images=tuple(groups["face"]),
        no_face_images=tuple(groups["no_face"]),
        corrupt_images=tuple(groups["corrupt"]),
    )


@dataclass(frozen=True)
class _Look:
    colour_mix: npt.NDArray[np.float64]  # 3x3, output channel = mix @ input channels
    background: npt.NDArray[np.float64]  # RGB
    centre: tuple[float, float]  # where in the astronaut photo the crop is centred
    scale: float
    stretch: float  # horizontal / vertical scale ratio


def _identity_look(rng: np.random.Generator) -> _Look:
    # A channel permutation blended with the identity keeps skin plausible but the colours apart.
    permutation = np.eye(3)[rng.permutation(3)]
    weight = rng.uniform(0.35, 0.65)
    mix = (1.0 - weight) * np.eye(3) + weight * permutation
    mix *= rng.uniform(0.85, 1.15, size=(3, 1))
    return _Look(
        colour_mix=mix,
        background=rng.uniform(20.0, 235.0, size=3),
        centre=(
            _FACE_CENTRE[0] + rng.uniform(-6.0, 6.0),
            _FACE_CENTRE[1] + rng.uniform(-6.0, 6.0),
        ),
        scale=_BASE_SCALE * rng.uniform(0.9, 1.1),
        stretch=rng.uniform(0.82, 1.18),
    )


def _face_image(
    source: npt.NDArray[np.uint8], look: _Look, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    rows, cols = IMAGE_SIZE
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    scale = look.scale * rng.uniform(0.93, 1.07)
    shift = rng.uniform(-6.0, 6.0, size=2)
    # Output pixel (u, v), measured from the output centre, maps to source pixel
    # centre + scale * R(angle) @ diag(stretch, 1) @ (u, v) + shift.
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = scale * rotation @ np.diag([1.0 / look.stretch, 1.0])
    output_centre = np.array([cols / 2.0, rows / 2.0])
    offset = np.array(look.centre) + shift - linear @ output_centre
    coefficients = (linear[0, 0], linear[0, 1], offset[0], linear[1, 0], linear[1, 1], offset[1])
    warped = Image.fromarray(source).transform(
        (cols, rows),
        Image.Transform.AFFINE,
        data=tuple(float(value) for value in coefficients),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    pixels = np.asarray(warped, dtype=np.float64) @ look.colour_mix.T
    # The background outside a soft ellipse around the face takes the identity's colour.
    y, x = np.mgrid[0:rows, 0:cols]
    distance = np.hypot((x - cols / 2.0) / (cols * 0.36), (y - rows / 2.0 + 4.0) / (rows * 0.40))
    keep = np.clip((1.25 - distance) / 0.3, 0.0, 1.0)[:, :, np.newaxis]
    pixels = keep * pixels + (1.0 - keep) * look.background
    pixels = pixels * rng.uniform(0.8, 1.2) + rng.uniform(-12.0, 12.0)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    image: npt.NDArray[np.uint8] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return image


def _blank_image(rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    rows, cols = IMAGE_SIZE
    start, end = rng.uniform(0.0, 255.0, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, rows)[:, np.newaxis, np.newaxis]
    pixels = start + ramp * (end - start) + rng.normal(0.0, 4.0, size=(rows, cols, 3))
    image: npt.NDArray[np.uint8] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return image


def _encode(pixels: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
