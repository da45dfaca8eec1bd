"""Verification pairs: reading LFW's ``pairs.txt`` or a CSV, and building pairs from labels.

A pair is two image paths and whether they show the same person. Two file formats are read, told
apart by their content:

- LFW's ``pairs.txt``: an optional header line (``N``, or ``folds n_per_fold`` such as ``10 300``),
  then ``name i j`` for two images of one person (``images_root/name/name_0001.jpg``) and
  ``name1 i name2 j`` for two people, separated by any whitespace.
- A CSV whose header is ``path_a,path_b,same``: paths relative to ``images_root`` unless absolute,
  ``same`` one of 1/0/true/false/yes/no in any case.

``make_pairs`` draws seeded same and different pairs from image-to-identity labels, such as those
``read_identity_file`` reads from CelebA's ``identity_CelebA.txt``, and ``write_pairs_csv`` stores
them in the CSV format.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CSV_HEADER = ("path_a", "path_b", "same")
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})
# Identities with at most this many candidate same pairs have them all listed and shuffled; larger
# ones are sampled, which keeps memory flat for an identity with thousands of images.
_ENUMERATE_LIMIT = 100_000


@dataclass(frozen=True)
class Pair:
    """Two images and whether they show the same person."""

    path_a: Path
    path_b: Path
    same: bool


def read_pairs(pairs_file: Path, *, images_root: Path) -> list[Pair]:
    """Reads LFW's ``pairs.txt`` format or the ``path_a,path_b,same`` CSV, in the file's order.

    The order matters: LFW's file is ordered by fold, which ``metrics.kfold_accuracy`` relies on.
    Image files are not checked for existence here.
    """
    text = Path(pairs_file).read_text(encoding="utf-8-sig")
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise ValueError(f"{pairs_file} has no pairs; give a file with at least one pair.")
    header = tuple(field.strip().lower() for field in first.split(","))
    if header[0] == CSV_HEADER[0]:
        if header != CSV_HEADER:
            raise ValueError(
                f"{pairs_file}: a CSV of pairs must have the header 'path_a,path_b,same', found "
                f"{first.strip()!r}; fix the header."
            )
        pairs = _read_csv_pairs(text, pairs_file=pairs_file, images_root=images_root)
    else:
        pairs = _read_lfw_pairs(text, pairs_file=pairs_file, images_root=images_root)
    if not pairs:
        raise ValueError(f"{pairs_file} has a header but no pairs; add at least one pair.")
    return pairs


def _lfw_image(images_root: Path, name: str, index: str, *, where: str) -> Path:
    if not index.isdigit() or int(index) < 1:
        raise ValueError(f"{where}: image number {index!r} must be a positive integer.")
    return images_root / name / f"{name}_{int(index):04d}.jpg"


def _read_lfw_pairs(text: str, *, pairs_file: Path, images_root: Path) -> list[Pair]:
    pairs: list[Pair] = []
    expected: int | None = None
    seen_content = False
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{pairs_file}, line {number}"
        if not seen_content and len(fields) <= 2 and all(field.isdigit() for field in fields):
            # LFW's header: "N" (pairsDevTrain.txt: N same then N different pairs) or
            # "folds n_per_fold" (pairs.txt: each fold has n same then n different pairs).
            counts = [int(field) for field in fields]
            expected = 2 * counts[0] * (counts[1] if len(counts) == 2 else 1)
            seen_content = True
            continue
        seen_content = True
        if len(fields) == 3:
            name, i, j = fields
            pairs.append(
                Pair(
                    _lfw_image(images_root, name, i, where=where),
                    _lfw_image(images_root, name, j, where=where),
                    same=True,
                )
            )
        elif len(fields) == 4:
            name_a, i, name_b, j = fields
            pairs.append(
                Pair(
                    _lfw_image(images_root, name_a, i, where=where),
                    _lfw_image(images_root, name_b, j, where=where),
                    same=False,
                )
            )
        else:
            raise ValueError(
                f"{where}: expected 'name i j' or 'name1 i name2 j' (LFW pairs.txt) but found "
                f"{len(fields)} fields; fix or remove the line."
            )
    if expected is not None and expected != len(pairs):
        logger.warning(
            "%s: the header announces %d pairs but the file has %d",
            pairs_file,
            expected,
            len(pairs),
        )
    return pairs


def _parse_same(value: str, *, where: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{where}: 'same' is {value!r}; write 1/0, true/false or yes/no.")


def _read_csv_pairs(text: str, *, pairs_file: Path, images_root: Path) -> list[Pair]:
    pairs: list[Pair] = []
    reader = csv.reader(text.splitlines())
    next(reader)  # The header, already recognised by the caller.
    for row in reader:
        if not any(field.strip() for field in row):
            continue
        where = f"{pairs_file}, line {reader.line_num}"
        if len(row) != 3:
            raise ValueError(
                f"{where}: expected 3 comma-separated fields (path_a,path_b,same) but found "
                f"{len(row)}; fix or remove the line."
            )
        path_a, path_b, same = (field.strip() for field in row)
        if not path_a or not path_b:
            raise ValueError(f"{where}: an image path is empty; give both paths.")
        # Joining an absolute path onto images_root keeps the absolute path.
        pairs.append(
            Pair(images_root / path_a, images_root / path_b, same=_parse_same(same, where=where))
        )
    return pairs


def write_pairs_csv(pairs: Sequence[Pair], path: Path, *, images_root: Path) -> Path:
    """Writes ``pairs`` as a ``path_a,path_b,same`` CSV with paths relative to ``images_root``."""
    rows = [
        (
            _relative(pair.path_a, images_root),
            _relative(pair.path_b, images_root),
            "1" if pair.same else "0",
        )
        for pair in pairs
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    return path


def _relative(path: Path, images_root: Path) -> str:
    for candidate, root in ((path, images_root), (path.resolve(), images_root.resolve())):
        try:
            return candidate.relative_to(root).as_posix()
        except ValueError:
            continue
    raise ValueError(
        f"{path} is not inside {images_root}; pass the images_root that contains every image."
    )


def read_identity_file(path: Path, *, images_dir: Path) -> dict[Path, str]:
    """Reads CelebA's ``identity_CelebA.txt`` (``000001.jpg 2880`` per line) for ``images_dir``.

    An optional first line ``image identity`` is skipped. Only images present in ``images_dir``
    are kept, since a CelebA subset usually has a fraction of the 202,599 listed images.
    """
    if not images_dir.is_dir():
        raise ValueError(f"{images_dir} is not a directory; give the folder holding the images.")
    # One directory listing instead of a stat per line: the file lists 202,599 images.
    present = {entry.name for entry in os.scandir(images_dir) if entry.is_file()}
    labels: dict[Path, str] = {}
    listed = 0
    with Path(path).open(encoding="utf-8-sig") as stream:
        for number, line in enumerate(stream, start=1):
            fields = line.split()
            if not fields:
                continue
            if listed == 0 and [field.lower() for field in fields] == ["image", "identity"]:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{path}, line {number}: expected 'image identity' (e.g. '000001.jpg 2880') "
                    f"but found {len(fields)} fields; fix or remove the line."
                )
            listed += 1
            image, identity = fields
            if image in present:
                labels[images_dir / image] = identity
    logger.info(
        "%s: %d of %d listed images are in %s (%d identities)",
        path,
        len(labels),
        listed,
        images_dir,
        len(set(labels.values())),
    )
    return labels


def make_pairs(
    labels: Mapping[Path, str], *, same_pairs: int, different_pairs: int, seed: int
) -> list[Pair]:
    """Draws de-duplicated same and different pairs from image-to-identity labels.

    Same pairs come from identities with two or more images, spread round-robin over them (every
    such identity gives one pair before any gives a second), never an image with itself. Different
    pairs are drawn uniformly from all pairs of images of two different identities. When fewer
    unique pairs exist than asked for, all of them are returned and the shortfall is logged.

    The result is deterministic for a seed, whatever the order of ``labels``, and comes in a seeded
    random order so that contiguous folds (``metrics.kfold_accuracy``) mix both kinds of pairs.
    """
    if same_pairs < 0 or different_pairs < 0:
        raise ValueError(
            f"Pair counts must be zero or positive, got same_pairs={same_pairs} and "
            f"different_pairs={different_pairs}."
        )
    rng = np.random.default_rng(seed)
    images = sorted(labels)
    by_identity: dict[str, list[Path]] = {}
    for image in images:
        by_identity.setdefault(labels[image], []).append(image)
    pairs = _same_pairs(by_identity, count=same_pairs, rng=rng)
    pairs += _different_pairs(images, labels, count=different_pairs, rng=rng)
    order = rng.permutation(len(pairs))
    return [pairs[index] for index in order]


def _shuffled_index_pairs(size: int, rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """All (i, j) with i < j < size, each once, in random order."""
    total = size * (size - 1) // 2
    if total <= _ENUMERATE_LIMIT:
        rows, cols = np.triu_indices(size, k=1)
        for index in rng.permutation(total):
            yield int(rows[index]), int(cols[index])
        return
    seen: set[tuple[int, int]] = set()
    while len(seen) < total:
        first, second = sorted(int(value) for value in rng.choice(size, size=2, replace=False))
        if (first, second) not in seen:
            seen.add((first, second))
            yield first, second


def _same_pairs(
    by_identity: Mapping[str, Sequence[Path]], *, count: int, rng: np.random.Generator
) -> list[Pair]:
    eligible = sorted(identity for identity, paths in by_identity.items() if len(paths) >= 2)
    order = [eligible[index] for index in rng.permutation(len(eligible))]
    generators = {
        identity: _shuffled_index_pairs(len(by_identity[identity]), rng) for identity in order
    }
    pairs: list[Pair] = []
    while order and len(pairs) < count:
        still_open = []
        for identity in order:
            if len(pairs) == count:
                break
            drawn = next(generators[identity], None)
            if drawn is None:
                continue
            paths = by_identity[identity]
            pairs.append(Pair(paths[drawn[0]], paths[drawn[1]], same=True))
            still_open.append(identity)
        order = still_open
    if len(pairs) < count:
        logger.warning(
            "Asked for %d same pairs but only %d unique ones exist (%d identities with 2+ images)",
            count,
            len(pairs),
            len(eligible),
        )
    return pairs


def _different_pairs(
    images: Sequence[Path], labels: Mapping[Path, str], *, count: int, rng: np.random.Generator
) -> list[Pair]:
    identities = np.array([labels[image] for image in images], dtype=object)
    sizes = np.unique(identities, return_counts=True)[1].astype(np.int64)
    available = int((len(images) ** 2 - int(np.sum(sizes**2))) // 2)
    if count > available:
        logger.warning(
            "Asked for %d different pairs but only %d unique ones exist", count, available
        )
        count = available
    if count == 0:
        return []
    chosen: list[tuple[int, int]]
    if count > available // 2:
        # Rejection sampling slows down as the unused pairs run out; listing them all is cheap
        # here because there are at most twice as many as asked for.
        rows, cols = np.triu_indices(len(images), k=1)
        different = identities[rows] != identities[cols]
        candidates = np.flatnonzero(different)
        picked = np.sort(rng.choice(candidates, size=count, replace=False))
        chosen = [(int(rows[index]), int(cols[index])) for index in picked]
    else:
        seen: set[tuple[int, int]] = set()
        chosen = []
        while len(chosen) < count:
            # Draws in batches: two images uniformly at random, kept when their identities differ,
            # which is uniform over the different pairs.
            batch = rng.integers(0, len(images), size=(2 * (count - len(chosen)) + 16, 2))
            for first, second in batch:
                key = (int(min(first, second)), int(max(first, second)))
                if identities[key[0]] == identities[key[1]] or key in seen:
                    continue
                seen.add(key)
                chosen.append(key)
                if len(chosen) == count:
                    break
    return [Pair(images[first], images[second], same=False) for first, second in chosen]


def split_by_identity(
    labels: Mapping[Path, str], *, seed: int
) -> tuple[dict[Path, str], dict[Path, str]]:
    """Splits images into two halves by identity (no identity in both), seeded.

    The first half is for tuning (the alignment template, choices such as flip augmentation), the
    second is held out from that tuning for calibration, so the threshold is not fitted on data the
    rest of the pipeline was tuned on.
    """
    identities = sorted(set(labels.values()))
    order = np.random.default_rng(seed).permutation(len(identities))
    first = {identities[index] for index in order[: len(identities) // 2]}
    tuning = {path: who for path, who in labels.items() if who in first}
    held_out = {path: who for path, who in labels.items() if who not in first}
    return tuning, held_out
