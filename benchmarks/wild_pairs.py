"""Models side by side on the in-the-wild pairs: calibrated on one half of the people, evaluated on
the other, each through the service's full pipeline (decode, MTCNN, alignment, embedding).

The protocol is the default model's own (README, "The default model's template and
calibration"): pairs of the held-out half of the identities in ``img_celeba_wild`` calibrate the
threshold, pairs of the tuning half are evaluated at it. Every model given gets the same
protocol, so a fine-tuned model is compared with the default one on equal terms; the threshold
each model's own ``metadata.json`` carries is also reported. Missing faces count as rejected.

    python benchmarks/wild_pairs.py --models models/dlib_resnet_v1/1 models/<name>/<version>
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training import metrics  # noqa: E402
from training.calibrate import calibrate  # noqa: E402
from training.evaluate import (  # noqa: E402
    evaluate_distances,
    load_pipeline,
    pair_distances,
    pipeline_embed_fn,
)
from training.pairs import (  # noqa: E402
    make_pairs,
    read_identity_file,
    split_by_identity,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=3000, help="pairs per half")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    celeba = args.data / "celeba"
    images = celeba / "img_celeba_wild"
    labels = read_identity_file(celeba / "identity_CelebA.txt", images_dir=images)
    tuning, held_out = split_by_identity(labels, seed=args.seed)
    half = args.pairs // 2
    calibration_pairs = make_pairs(held_out, same_pairs=half, different_pairs=half, seed=args.seed)
    evaluation_pairs = make_pairs(tuning, same_pairs=half, different_pairs=half, seed=args.seed)
    print(
        f"{len(labels)} photos of {len(set(labels.values()))} people; calibration: "
        f"{len(calibration_pairs)} pairs of the held-out half, evaluation: "
        f"{len(evaluation_pairs)} pairs of the tuning half (seed {args.seed})"
    )
    print()
    header = (
        f"{'model':<34} | {'threshold':>9} | {'10-fold':>7} | {'at thr.':>7} | "
        f"{'AUC':>6} | {'EER':>6} | {'TAR@1e-3':>8} | {'at own':>6} | {'own thr.':>8} | {'s':>4}"
    )
    print(header)
    print("-" * len(header))
    for model in args.models:
        started = time.perf_counter()
        pipeline = load_pipeline(model)
        embed = pipeline_embed_fn(pipeline)
        measured = pair_distances(calibration_pairs, embed=embed)
        both = measured.both_faces
        calibration = calibrate(
            measured.distances[both], measured.same[both], source="wild held-out pairs"
        )
        evaluated = pair_distances(evaluation_pairs, embed=embed)
        result = evaluate_distances(evaluated, threshold=calibration.threshold)
        own = pipeline.metadata.threshold
        at_own = metrics.accuracy_at(evaluated.distances, evaluated.same, threshold=own)
        name = f"{pipeline.metadata.name}/{pipeline.metadata.version}"
        print(
            f"{name:<34} | {calibration.threshold:>9.4f} | {result.ten_fold_accuracy:>7.4f} | "
            f"{result.accuracy_at_threshold:>7.4f} | {result.roc_auc:>6.4f} | "
            f"{result.equal_error_rate:>6.4f} | {result.tar_at_far_1e3.tar:>8.4f} | "
            f"{at_own:>6.4f} | {own:>8.4f} | {time.perf_counter() - started:>4.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
