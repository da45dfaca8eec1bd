"""Model-only throughput: aligned 150x150 face chips per second through the SavedModel, by batch.

The chips are real faces cut by dlib's ``get_face_chip`` (as ``embedding_tower.py`` cuts them),
tiled to the largest batch; timing does not depend on which face a chip shows. Each batch size is
warmed up once (graph tracing for that shape), then timed over ``--rounds`` rounds of at least
``--min-chips`` chips each; the table gives the median round's chips per second.

    python benchmarks/model_throughput.py [--batches 1,8,32,64,128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from app.pipeline.embed import Embedder  # noqa: E402
from benchmarks.embedding_tower import load_chips  # noqa: E402
from benchmarks.service_load import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32,64,128")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-chips", type=int, default=128, help="chips per timed round")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models/dlib_resnet_v1/1")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    batches = [int(batch) for batch in args.batches.split(",")]
    if min(batches) < 1 or args.rounds < 1:
        raise ValueError("Batch sizes and --rounds must be at least 1.")

    import tensorflow as tf

    chips = load_chips(args.data, 32)
    tiled = np.resize(chips, (max(batches), *chips.shape[1:]))
    embedder = Embedder(args.model_dir, max_batch_size=max(batches))
    print(f"machine: {machine()}; TensorFlow {tf.__version__}")
    print(f"chips: {len(chips)} distinct real 150x150 chips; rounds: {args.rounds}")
    print()
    print(f"{'batch':>5} | {'chips/s':>8} | {'ms/batch':>9} | {'ms/chip':>8}")
    print(f"{'-' * 5}-+-{'-' * 8}-+-{'-' * 9}-+-{'-' * 8}")
    for batch in batches:
        inputs = tiled[:batch]
        embedder.embed(inputs)  # tracing for this shape, outside the timing
        calls = max(1, -(-args.min_chips // batch))
        rates = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(calls):
                embedder.embed(inputs)
            rates.append(calls * batch / (time.perf_counter() - started))
        rate = statistics.median(rates)
        print(f"{batch:>5} | {rate:>8.1f} | {1000 * batch / rate:>9.1f} | {1000 / rate:>8.2f}")


if __name__ == "__main__":
    main()
