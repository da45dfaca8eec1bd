"""Calibrate a model's threshold and distance-to-probability mapping on labelled pairs.

The threshold is the distance that judges the calibration pairs most accurately (accept when
distance <= threshold). Platt scaling maps a distance d to the probability of the same person,
p = 1 / (1 + exp(a * d + b)), which the service reports as its confidence. Both go into the model's
``metadata.json``, where the service reads them.

Calibration uses only pairs where both faces were found: a pair with a missing face says nothing
about distances.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from app.pipeline.metadata import METADATA_FILE, ModelMetadata, read_metadata
from training import metrics
from training.evaluate import (
    check_images_exist,
    load_pipeline,
    pair_distances,
    pipeline_embed_fn,
)
from training.pairs import read_pairs

logger = logging.getLogger(__name__)

METHOD = "training.calibrate"
PROBABILITY_FORMULA = "p(same | d) = 1 / (1 + exp(a * d + b))"


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and Platt scaling, with the pairs they were fitted on.

    ``threshold`` maximises accuracy on the pairs; ``threshold_at_far_1e3`` is the largest distance
    whose false accept rate is at most 1e-3 (for a stricter operating point), ``platt_a`` and
    ``platt_b`` parameterise p(same | d) = 1 / (1 + exp(a * d + b)).
    """

    threshold: float
    accuracy: float
    threshold_at_far_1e3: float
    platt_a: float
    platt_b: float
    pairs: dict[str, int]
    source: str
    figures: dict[str, Any]


def calibrate(distances: npt.ArrayLike, same: npt.ArrayLike, *, source: str) -> Calibration:
    """Fits the threshold and Platt scaling to pair distances; pure, no files touched.

    ``distances`` must be finite: pass only the pairs where both faces were found. ``source`` says
    which pairs were used, for the metadata.
    """
    if not source.strip():
        raise ValueError("source is empty; say which pairs the calibration used.")
    distance_array, same_array = metrics.validate(distances, same)
    if not np.all(np.isfinite(distance_array)):
        raise ValueError(
            "Calibration needs finite distances; pass only the pairs where both faces were found."
        )
    best = metrics.best_threshold(distance_array, same_array)
    strict = metrics.true_accept_rate_at(distance_array, same_array, false_accept_rate=1e-3)
    platt = metrics.fit_platt(distance_array, same_array)
    if platt.a <= 0:
        logger.warning(
            "Platt scaling came out with a = %.4g <= 0: the probability does not fall with the "
            "distance on these pairs, so the model or the pairs are suspect",
            platt.a,
        )
    eer = metrics.equal_error_rate(distance_array, same_array)
    return Calibration(
        threshold=best.threshold,
        accuracy=best.accuracy,
        threshold_at_far_1e3=strict.threshold,
        platt_a=platt.a,
        platt_b=platt.b,
        pairs={
            "total": int(distance_array.size),
            "same": int(np.count_nonzero(same_array)),
            "different": int(np.count_nonzero(~same_array)),
        },
        source=source,
        figures={
            "roc_auc": metrics.roc_auc(distance_array, same_array),
            "equal_error_rate": {"rate": eer.rate, "threshold": eer.threshold},
            "tar_at_far_1e-3": strict.to_dict(),
            "tar_at_far_1e-2": metrics.true_accept_rate_at(
                distance_array, same_array, false_accept_rate=1e-2
            ).to_dict(),
        },
    )


def calibration_to_metadata(calibration: Calibration) -> dict[str, Any]:
    """The ``calibration`` entry of ``metadata.json``; the service reads ``platt.a``/``platt.b``."""
    return {
        "method": METHOD,
        "source": calibration.source,
        "threshold": calibration.threshold,
        "threshold_rule": "the distance with the best accuracy on the pairs",
        "accuracy": calibration.accuracy,
        "threshold_at_far_1e-3": calibration.threshold_at_far_1e3,
        "platt": {
            "a": calibration.platt_a,
            "b": calibration.platt_b,
            "formula": PROBABILITY_FORMULA,
        },
        "pairs": dict(calibration.pairs),
        "figures": calibration.figures,
    }


def apply_calibration(model_dir: Path, calibration: Calibration) -> ModelMetadata:
    """Rewrites ``<model_dir>/metadata.json`` with the calibrated threshold and Platt scaling.

    The file is replaced atomically (written beside it, then renamed over it), so a reader never
    sees half a file.
    """
    if not np.isfinite(calibration.threshold) or calibration.threshold <= 0:
        raise ValueError(
            f"The calibrated threshold is {calibration.threshold}, but a model's threshold must "
            "be a positive distance; check the calibration pairs."
        )
    metadata = read_metadata(model_dir)
    updated = metadata.model_copy(
        update={
            "threshold": calibration.threshold,
            "threshold_source": (
                f"calibrated by {METHOD}: the distance with the best accuracy "
                f"({calibration.accuracy:.2%}) on {calibration.source}"
            ),
            "calibration": calibration_to_metadata(calibration),
        }
    )
    # model_copy does not validate; a round trip through the validator does.
    updated = ModelMetadata.model_validate(updated.model_dump())
    staging = Path(tempfile.mkdtemp(prefix=".calibration-", dir=model_dir))
    try:
        written = updated.write(staging)
        # Keep the old file's permissions: the service may run as another user.
        shutil.copymode(Path(model_dir) / METADATA_FILE, written)
        os.replace(written, Path(model_dir) / METADATA_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "Calibrated %s: threshold %.4f (was %.4f), Platt a = %.4f, b = %.4f",
        model_dir,
        updated.threshold,
        metadata.threshold,
        calibration.platt_a,
        calibration.platt_b,
    )
    return updated


def calibrate_model(
    *, model_dir: Path, pairs_file: Path, images_root: Path, batch_size: int = 32
) -> Calibration:
    """Embeds the pairs with the model's ``FacePipeline``, calibrates on the pairs where both faces
    were found and writes the result into ``<model_dir>/metadata.json``."""
    pairs = read_pairs(pairs_file, images_root=images_root)
    check_images_exist(pairs, images_root=images_root)
    pipeline = load_pipeline(model_dir)
    measured = pair_distances(pairs, embed=pipeline_embed_fn(pipeline), batch_size=batch_size)
    both = measured.both_faces
    used = int(np.count_nonzero(both))
    if used < len(pairs):
        logger.info(
            "Calibrating on the %d of %d pairs where both faces were found", used, len(pairs)
        )
    calibration = calibrate(
        measured.distances[both],
        measured.same[both],
        source=f"the {used} of {len(pairs)} pairs in {pairs_file.name} where both faces were found",
    )
    apply_calibration(model_dir, calibration)
    return calibration
