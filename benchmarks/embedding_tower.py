"""CPU milliseconds per face: our SavedModel tower against dlib's ``compute_face_descriptor``.

Both run on the same 150x150 chips, cut by dlib's own ``get_face_chip`` from real photos (the
packaged astronaut photo, plus ``../shared/data`` when present), at batch 1 and batch 32. Rounds
alternate between the two so that machine noise hits both alike; the table gives medians over
rounds and the ratio ours / dlib.

    python benchmarks/embedding_tower.py [--rounds 7] [--model-dir models/dlib_resnet_v1/1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from app.pipeline.embed import Embedder  # noqa: E402
from training.import_dlib import SOURCE_FILE, packaged_model_file  # noqa: E402

BATCH = 32


def load_chips(data_root: Path, count: int) -> np.ndarray:
    import dlib
    from PIL import Image
    from skimage import data

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(
        str(packaged_model_file("shape_predictor_5_face_landmarks.dat"))
    )
    images = [np.asarray(data.astronaut())]
    for photo in sorted((data_root / "celeba" / "img_celeba_wild").glob("*.jpg"))[: 2 * count]:
        with Image.open(photo) as opened:
            images.append(np.asarray(opened.convert("RGB")))
    chips = []
    for pixels in images:
        for face in detector(pixels, 1):
            chips.append(
                dlib.get_face_chip(pixels, predictor(pixels, face), size=150, padding=0.25)
            )
        if len(chips) >= count:
            break
    # Without the shared photos, repeat what there is: timing does not depend on the face.
    while len(chips) < count:
        chips.append(chips[len(chips) % max(1, len(chips))])
    return np.stack(chips[:count]).astype(np.uint8)


def time_per_face(run: Callable[[], object], faces: int) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000.0 / faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models/dlib_resnet_v1/1")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    import dlib
    import tensorflow as tf

    chips = load_chips(args.data, BATCH)
    embedder = Embedder(args.model_dir, max_batch_size=BATCH)
    descriptor = dlib.face_recognition_model_v1(str(packaged_model_file(SOURCE_FILE)))
    chip_list = list(chips)

    cases: dict[tuple[str, int], Callable[[], object]] = {
        ("ours", 1): lambda: [embedder.embed(chip[np.newaxis]) for chip in chips[:8]],
        ("dlib", 1): lambda: [descriptor.compute_face_descriptor(chip) for chip in chips[:8]],
        ("ours", BATCH): lambda: embedder.embed(chips),
        ("dlib", BATCH): lambda: descriptor.compute_face_descriptor(chip_list),
    }
    faces = {1: 8, BATCH: BATCH}
    for run in cases.values():  # warm-up: graph tracing, dlib's allocations
        run()
    samples: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, run in cases.items():
            samples[case].append(time_per_face(run, faces[case[1]]))

    ours_vs_dlib = np.abs(
        embedder.embed(chips[:4]) - [descriptor.compute_face_descriptor(c) for c in chips[:4]]
    )
    intra_op = tf.config.threading.get_intra_op_parallelism_threads()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"TensorFlow {tf.__version__} (intra-op threads {intra_op or 'auto'}), "
        f"dlib {dlib.__version__}"
    )
    print(
        f"chips: {len(chips)} real 150x150 face chips cut by dlib.get_face_chip; "
        f"rounds: {args.rounds}; "
        f"largest |ours - dlib| = {ours_vs_dlib.max():.2e}"
    )
    print()
    print(f"{'batch':>5} | {'ours ms/face':>12} | {'dlib ms/face':>12} | {'ours/dlib':>9}")
    print(f"{'-' * 5}-+-{'-' * 12}-+-{'-' * 12}-+-{'-' * 9}")
    for batch in (1, BATCH):
        ours = statistics.median(samples[("ours", batch)])
        theirs = statistics.median(samples[("dlib", batch)])
        print(f"{batch:>5} | {ours:>12.1f} | {theirs:>12.1f} | {ours / theirs:>9.2f}")


if __name__ == "__main__":
    main()
