"""Training throughput of the Siamese network: images per second through training steps.

One training step takes a batch of pairs (two images each) through the shared tower, the
contrastive loss and the optimizer update, as ``python -m training train`` runs it. Both phases of
transfer learning are timed: ``head`` (backbone frozen) and ``full`` (everything trainable). The
inputs are random chips already in memory, so the figures are the model's, not the input
pipeline's (decoding two 150x150 JPEG chips costs far less than a step). Each setting is warmed up
(tracing, compilation), then timed over ``--rounds`` rounds of ``--steps`` steps; the table gives
the median round.

It runs on whichever Keras backend ``KERAS_BACKEND`` names (TensorFlow by default; JAX on a
machine without TensorFlow), on the GPU when there is one; say which when quoting the figures.

    python benchmarks/training_throughput.py [--backbone dlib_resnet] [--batch-size 32]
        [--precision float32|mixed_float16|both] [--unfreeze-layers N] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from training.backbones import BACKBONES  # noqa: E402
from training.model import (  # noqa: E402
    ContrastiveLoss,
    TowerConfig,
    build_siamese,
    build_tower,
    set_phase,
)


def measure(
    *,
    backbone: str,
    precision: str,
    phase: str,
    batch_size: int,
    rounds: int,
    steps: int,
    unfreeze_layers: int = 0,
) -> tuple[float, float, int]:
    """Median images/s, median ms per step, and the trainable weight count."""
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    tower = build_tower(TowerConfig(backbone=backbone, weights="none"), pretrained=False)
    trainable = set_phase(
        tower, "head" if phase == "head" else "full", backbone_layers=unfreeze_layers
    )
    siamese = build_siamese(tower)
    siamese.compile(optimizer=keras.optimizers.Adam(1e-4), loss=ContrastiveLoss(margin=1.0))
    rows, cols = tower.input_shape[1:3]
    rng = np.random.default_rng(0)
    first = rng.uniform(0, 255, (batch_size, rows, cols, 3)).astype(np.float32)
    second = rng.uniform(0, 255, (batch_size, rows, cols, 3)).astype(np.float32)
    same = (np.arange(batch_size) % 2).astype(np.float32)
    for _ in range(3):
        siamese.train_on_batch([first, second], same)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            loss = siamese.train_on_batch([first, second], same)
        float(np.asarray(loss))  # waits for the device
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return 2 * batch_size * steps / median, 1000 * median / steps, trainable


def devices() -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return ", ".join(str(device) for device in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return ", ".join(str(gpu.name) for gpu in gpus) or "CPU"
    return str(backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=BACKBONES, default="dlib_resnet")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    parser.add_argument(
        "--precision", choices=("float32", "mixed_float16", "both"), default="float32"
    )
    parser.add_argument("--phases", default="head,full")
    parser.add_argument(
        "--unfreeze-layers", type=int, default=0, help="the full phase's top layers (0: all)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    args = parser.parse_args()
    if args.batch_size < 2 or args.rounds < 1 or args.steps < 1:
        raise ValueError("--batch-size must be at least 2, --rounds and --steps at least 1.")
    precisions = ["float32", "mixed_float16"] if args.precision == "both" else [args.precision]
    phases = args.phases.split(",")

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Keras {keras.__version__} on "
        f"the {keras.backend.backend()} backend; devices: {devices()}"
    )
    print(
        f"{args.backbone}, batches of {args.batch_size} pairs ({2 * args.batch_size} images), "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    print()
    print(
        f"{'precision':>13} | {'phase':>5} | {'trainable':>10} | {'images/s':>9} | {'ms/step':>8}"
    )
    print(f"{'-' * 13}-+-{'-' * 5}-+-{'-' * 10}-+-{'-' * 9}-+-{'-' * 8}")
    for precision in precisions:
        for phase in phases:
            rate, step_ms, trainable = measure(
                backbone=args.backbone,
                precision=precision,
                phase=phase,
                batch_size=args.batch_size,
                rounds=args.rounds,
                steps=args.steps,
                unfreeze_layers=args.unfreeze_layers,
            )
            print(
                f"{precision:>13} | {phase:>5} | {trainable:>10,} | {rate:>9.1f} | {step_ms:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
