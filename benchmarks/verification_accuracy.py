"""Our pipeline against face_recognition's (dlib) on the same labelled in-the-wild pairs.

Pairs: seeded, half same and half different, from the in-the-wild CelebA photos in
``../shared/data`` (identities from ``identity_CelebA.txt``). Each photo is embedded once per
pipeline:

- ours: decode (EXIF) -> MTCNN -> 5-point similarity to the model's template -> SavedModel, with and
  without the horizontal-flip augmentation;
- dlib, as face_recognition runs it: HOG detector (upsample 1), 5-point shape predictor,
  ``compute_face_descriptor`` (padding 0.25, no jitter), threshold 0.6.

A pair where a pipeline found no face in one photo counts as rejected (distance = infinity). Then
CPU time per photo (decode + detect + align + embed, batch 1) on photos scaled to a longer side of
640 px, rounds alternating between the two pipelines; medians.

    python benchmarks/verification_accuracy.py [--pairs 3000] [--timing-photos 40]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from app.pipeline.pipeline import FacePipeline, PipelineConfig  # noqa: E402
from training import metrics  # noqa: E402
from training.import_dlib import SOURCE_FILE, packaged_model_file  # noqa: E402
from training.pairs import Pair, make_pairs, read_identity_file, split_by_identity  # noqa: E402

Embeddings = dict[Path, np.ndarray | None]


class DlibPipeline:
    """face_recognition's path: HOG (upsample 1), 5-point landmarks, descriptor."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(
            str(packaged_model_file("shape_predictor_5_face_landmarks.dat"))
        )
        self.descriptor = dlib.face_recognition_model_v1(str(packaged_model_file(SOURCE_FILE)))

    def embed(self, data: bytes) -> np.ndarray | None:
        # face_recognition.load_image_file: Pillow, RGB, no EXIF orientation.
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
        faces = self.detector(pixels, 1)
        if not faces:
            return None
        largest = max(faces, key=lambda rect: rect.width() * rect.height())
        shape = self.predictor(pixels, largest)
        return np.asarray(self.descriptor.compute_face_descriptor(pixels, shape))


def embed_ours(pipeline: FacePipeline, paths: Sequence[Path]) -> tuple[Embeddings, Embeddings]:
    """Embeddings without and with flip augmentation, from one detection per photo."""
    plain: Embeddings = {}
    flipped: Embeddings = {}
    for start in range(0, len(paths), 16):
        chunk = paths[start : start + 16]
        images = [pipeline.decode(path.read_bytes()).pixels for path in chunk]
        for path, image, faces in zip(chunk, images, pipeline.detect(images), strict=True):
            if not faces:
                plain[path] = flipped[path] = None
                continue
            chip = pipeline.align(image, faces[:1])
            both = pipeline.embedder.embed(np.concatenate([chip, chip[:, :, ::-1]]))
            plain[path] = both[0]
            flipped[path] = (both[0] + both[1]) / 2
        print(f"  ours: {min(start + 16, len(paths))}/{len(paths)} photos", file=sys.stderr)
    return plain, flipped


def embed_dlib(
    dlib_pipeline: DlibPipeline, paths: Sequence[Path], *, cache: Path | None
) -> Embeddings:
    """dlib's embeddings; with ``cache``, kept in an .npz (they never change) to rerun faster."""
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        if all(path.name in stored for path in paths):
            print(f"  dlib: embeddings read from {cache}", file=sys.stderr)
            return {path: stored[path.name] if stored[path.name].size else None for path in paths}
    result = _embed_dlib(dlib_pipeline, paths)
    if cache is not None:
        empty = np.zeros(0, dtype=np.float64)
        arrays: dict[str, Any] = {
            path.name: empty if embedding is None else embedding
            for path, embedding in result.items()
        }
        np.savez(cache, allow_pickle=False, **arrays)
    return result


def _embed_dlib(dlib_pipeline: DlibPipeline, paths: Sequence[Path]) -> Embeddings:
    result: Embeddings = {}
    for index, path in enumerate(paths, start=1):
        result[path] = dlib_pipeline.embed(path.read_bytes())
        if index % 100 == 0 or index == len(paths):
            print(f"  dlib: {index}/{len(paths)} photos", file=sys.stderr)
    return result


def distances(pairs: Sequence[Pair], embeddings: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    values = []
    for pair in pairs:
        first, second = embeddings[pair.path_a], embeddings[pair.path_b]
        values.append(np.inf if first is None or second is None else np.linalg.norm(first - second))
    return np.asarray(values), np.asarray([pair.same for pair in pairs])


def figures(pairs: Sequence[Pair], embeddings: Embeddings, threshold: float) -> dict[str, Any]:
    d, same = distances(pairs, embeddings)
    both = np.isfinite(d)
    mean, std, _ = metrics.kfold_accuracy(d, same, folds=10)
    both_mean, _, _ = metrics.kfold_accuracy(d[both], same[both], folds=10)
    best, _ = metrics.best_threshold(d[both], same[both])
    return {
        "ten_fold": mean,
        "ten_fold_std": std,
        "at_threshold": metrics.accuracy_at(d, same, threshold=threshold),
        "auc": metrics.roc_auc(d, same),
        "ten_fold_both_found": both_mean,
        "pairs_both_found": int(both.sum()),
        "best_threshold": best,
    }


def timing(
    pipeline: FacePipeline, dlib_pipeline: DlibPipeline, paths: Sequence[Path], rounds: int
) -> dict[str, float]:
    photos = []
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            rgb.thumbnail((640, 640), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=90)
            photos.append(buffer.getvalue())
    cases: dict[str, Callable[[bytes], object]] = {
        "ours": lambda data: pipeline.embed_largest([data]),
        "dlib": dlib_pipeline.embed,
    }
    for run in cases.values():
        run(photos[0])
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            for data in photos:
                start = time.perf_counter()
                run(data)
                samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models/dlib_resnet_v1/1")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-photos", type=int, default=40)
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument(
        "--dlib-cache", type=Path, default=None, help="an .npz to keep dlib's embeddings in"
    )
    args = parser.parse_args()

    celeba = args.data / "celeba"
    images = celeba / "img_celeba_wild"
    if not images.is_dir():
        raise SystemExit(f"The in-the-wild photos are not at {images}; pass --data.")
    labels = read_identity_file(celeba / "identity_CelebA.txt", images_dir=images)
    pairs = make_pairs(
        labels, same_pairs=args.pairs // 2, different_pairs=args.pairs // 2, seed=args.seed
    )
    tuning, _ = split_by_identity(labels, seed=0)
    paths = sorted({path for pair in pairs for path in (pair.path_a, pair.path_b)})

    pipeline = FacePipeline.from_model_dir(
        args.model_dir, config=PipelineConfig(flip_augmentation=False)
    )
    dlib_pipeline = DlibPipeline()
    ours_plain, ours_flip = embed_ours(pipeline, paths)
    theirs = embed_dlib(dlib_pipeline, paths, cache=args.dlib_cache)
    threshold = pipeline.metadata.threshold

    subsets = {
        "all pairs": pairs,
        "tuning-half identities": [p for p in pairs if p.path_a in tuning and p.path_b in tuning],
        "held-out-half identities": [
            p for p in pairs if p.path_a not in tuning and p.path_b not in tuning
        ],
    }
    variants = {
        "ours": (ours_plain, threshold),
        "ours + flip": (ours_flip, threshold),
        "dlib (face_recognition)": (theirs, 0.6),
    }
    print()
    print(
        f"{len(pairs)} pairs ({sum(p.same for p in pairs)} same) over {len(paths)} photos, "
        f"seed {args.seed}; our threshold {threshold:.4f} ({pipeline.metadata.threshold_source}); "
        "dlib's 0.6"
    )
    for name, (embeddings, _) in variants.items():
        missing = sum(embeddings[path] is None for path in paths)
        print(f"{name}: no face found in {missing} of {len(paths)} photos")
    for subset, subset_pairs in subsets.items():
        print(f"\n{subset}: {len(subset_pairs)} pairs")
        print(
            f"{'pipeline':<24} | {'10-fold':>13} | {'at threshold':>12} | {'AUC':>6} | "
            f"{'10-fold, both found':>19} | {'best thr':>8}"
        )
        for name, (embeddings, variant_threshold) in variants.items():
            f = figures(subset_pairs, embeddings, variant_threshold)
            print(
                f"{name:<24} | {f['ten_fold']:.4f}±{f['ten_fold_std']:.4f} | "
                f"{f['at_threshold']:>12.4f} | {f['auc']:.4f} | "
                f"{f['ten_fold_both_found']:>12.4f} ({f['pairs_both_found']}) | "
                f"{f['best_threshold']:>8.4f}"
            )

    # Time the pipeline as shipped: flip augmentation as the model's metadata says.
    shipped = FacePipeline(embedder=pipeline.embedder, detector=pipeline.detector)
    timing_paths = paths[: args.timing_photos]
    medians = timing(shipped, dlib_pipeline, timing_paths, args.timing_rounds)
    print(
        f"\nCPU time per photo (longer side 640 px, batch 1, flip "
        f"{'on' if shipped.flip_augmentation else 'off'}, {len(timing_paths)} photos x "
        f"{args.timing_rounds} rounds, medians; {os.cpu_count()} cores): ours "
        f"{medians['ours']:.0f} ms, dlib {medians['dlib']:.0f} ms, "
        f"ours/dlib {medians['ours'] / medians['dlib']:.2f}"
    )


if __name__ == "__main__":
    main()
