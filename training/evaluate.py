"""Evaluate a model on verification pairs: LFW-style figures, a JSON report and two plots.

Each image is embedded once, however many pairs it is in. An image where no face is found (or
that cannot be decoded) has no embedding; a pair with such an image gets distance +inf, which no
finite threshold accepts, so it counts as a "different" verdict: right for a different pair, a
false reject for a same pair. The figures are reported on all pairs that way and again on the
pairs where both faces were found.

``evaluate_model`` runs the service's own ``FacePipeline`` (detect, align, embed) from a model
directory; ``evaluate_pairs`` takes any embedding function, which keeps the tests model-free.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

# tqdm ships no type hints and pyproject.toml does not list it with the other untyped packages.
from tqdm import tqdm

from app.pipeline.compare import euclidean_distance
from app.pipeline.errors import InputError
from training import metrics
from training.pairs import Pair, read_pairs

if TYPE_CHECKING:
    from app.pipeline.metadata import ModelMetadata

logger = logging.getLogger(__name__)

Embedding = npt.NDArray[np.float32]
EmbedFn = Callable[[Sequence[Path]], Sequence[Embedding | None]]

MISSING_FACE_POLICY = "counted as rejected (distance = infinity)"
MAX_EXAMPLES = 20
REPORT_FILE = "evaluation.json"
ROC_FILE = "roc.png"
DISTANCES_FILE = "distances.png"


class EmbeddingPipeline(Protocol):
    """The part of ``app.pipeline.pipeline.FacePipeline`` that evaluation uses."""

    @property
    def metadata(self) -> ModelMetadata: ...

    def embed_largest(self, images: Sequence[bytes]) -> Sequence[Embedding | None]: ...


@dataclass(frozen=True)
class HeadlineFigures:
    """The verification figures for one set of pairs (see ``training.metrics`` for formulas)."""

    pairs: int
    same_pairs: int
    different_pairs: int
    threshold: float
    accuracy_at_threshold: float
    ten_fold_accuracy: float
    ten_fold_accuracy_std: float
    ten_fold_thresholds: tuple[float, ...]
    roc_auc: float
    equal_error_rate: float
    equal_error_rate_threshold: float
    tar_at_far_1e3: metrics.TarAtFar
    tar_at_far_1e2: metrics.TarAtFar
    best_threshold: float
    best_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "same_pairs": self.same_pairs,
            "different_pairs": self.different_pairs,
            "threshold": self.threshold,
            "accuracy_at_threshold": self.accuracy_at_threshold,
            "ten_fold_accuracy": {
                "mean": self.ten_fold_accuracy,
                "std": self.ten_fold_accuracy_std,
                "folds": len(self.ten_fold_thresholds),
                "thresholds": list(self.ten_fold_thresholds),
            },
            "roc_auc": self.roc_auc,
            "equal_error_rate": {
                "rate": self.equal_error_rate,
                "threshold": self.equal_error_rate_threshold,
            },
            "tar_at_far_1e-3": self.tar_at_far_1e3.to_dict(),
            "tar_at_far_1e-2": self.tar_at_far_1e2.to_dict(),
            "best_threshold": {"threshold": self.best_threshold, "accuracy": self.best_accuracy},
        }


@dataclass(frozen=True)
class EvaluationResult(HeadlineFigures):
    """The figures on all pairs (missing faces as rejected), the image counts, and the figures on
    the pairs where both faces were found (None when those lack a same or a different pair)."""

    images: int
    images_without_face: int
    images_without_face_examples: tuple[str, ...]
    pairs_with_missing_face: int
    missing_face_policy: str
    on_pairs_with_both_faces: HeadlineFigures | None

    def to_dict(self) -> dict[str, Any]:
        both = self.on_pairs_with_both_faces
        return {
            **super().to_dict(),
            "images": self.images,
            "images_without_face": {
                "count": self.images_without_face,
                "examples": list(self.images_without_face_examples),
            },
            "pairs_with_missing_face": self.pairs_with_missing_face,
            "missing_faces": self.missing_face_policy,
            "on_pairs_with_both_faces": both.to_dict() if both is not None else None,
        }


@dataclass(frozen=True)
class PairDistances:
    """Distances of the pairs, in order (+inf where a face is missing), and what was embedded."""

    distances: npt.NDArray[np.float64]
    same: npt.NDArray[np.bool_]
    images: int
    images_without_face: tuple[Path, ...]

    @property
    def both_faces(self) -> npt.NDArray[np.bool_]:
        """Which pairs had a face found in both images."""
        return np.isfinite(self.distances)


def embed_unique_images(
    paths: Sequence[Path], *, embed: EmbedFn, batch_size: int = 32
) -> dict[Path, Embedding | None]:
    """Embeds each distinct image once, in batches of ``batch_size``, with a progress bar.

    Paths naming the same file (after ``Path.resolve``) share one call; the result has an entry
    for every distinct path given, None where no face was found.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    resolved = {path: path.resolve() for path in paths}
    unique = list(dict.fromkeys(resolved.values()))
    by_resolved: dict[Path, Embedding | None] = {}
    with tqdm(total=len(unique), desc="Embedding", unit="image") as progress:
        for start in range(0, len(unique), batch_size):
            batch = unique[start : start + batch_size]
            results = embed(batch)
            if len(results) != len(batch):
                raise ValueError(
                    f"The embedding function returned {len(results)} results for {len(batch)} "
                    "images; it must return one (or None) per image."
                )
            by_resolved.update(zip(batch, results, strict=True))
            progress.update(len(batch))
    return {path: by_resolved[resolved_path] for path, resolved_path in resolved.items()}


def pair_distances(pairs: Sequence[Pair], *, embed: EmbedFn, batch_size: int = 32) -> PairDistances:
    """Euclidean distance of each pair's embeddings (as the service compares them); +inf when
    either has no embedding."""
    if not pairs:
        raise ValueError("There are no pairs to evaluate; give at least one pair.")
    paths = [path for pair in pairs for path in (pair.path_a, pair.path_b)]
    embeddings = embed_unique_images(paths, embed=embed, batch_size=batch_size)
    distances = np.full(len(pairs), np.inf)
    for index, pair in enumerate(pairs):
        first, second = embeddings[pair.path_a], embeddings[pair.path_b]
        if first is None or second is None:
            continue
        distances[index] = euclidean_distance(first, second)
    # Distinct files, so two spellings of one path count once.
    without_face: dict[Path, Path] = {}
    for path, embedding in embeddings.items():
        if embedding is None:
            without_face.setdefault(path.resolve(), path)
    return PairDistances(
        distances=distances,
        same=np.array([pair.same for pair in pairs], dtype=np.bool_),
        images=len({path.resolve() for path in embeddings}),
        images_without_face=tuple(without_face.values()),
    )


def headline_figures(
    distances: npt.ArrayLike, same: npt.ArrayLike, *, threshold: float, folds: int = 10
) -> HeadlineFigures:
    """All the headline figures for one set of pairs, accepting distance <= ``threshold``."""
    distance_array, same_array = metrics.validate(distances, same)
    ten_fold = metrics.kfold_accuracy(distance_array, same_array, folds=folds)
    eer = metrics.equal_error_rate(distance_array, same_array)
    best = metrics.best_threshold(distance_array, same_array)
    return HeadlineFigures(
        pairs=int(distance_array.size),
        same_pairs=int(np.count_nonzero(same_array)),
        different_pairs=int(np.count_nonzero(~same_array)),
        threshold=float(threshold),
        accuracy_at_threshold=metrics.accuracy_at(distance_array, same_array, threshold=threshold),
        ten_fold_accuracy=ten_fold.mean,
        ten_fold_accuracy_std=ten_fold.std,
        ten_fold_thresholds=tuple(float(value) for value in ten_fold.thresholds),
        roc_auc=metrics.roc_auc(distance_array, same_array),
        equal_error_rate=eer.rate,
        equal_error_rate_threshold=eer.threshold,
        tar_at_far_1e3=metrics.true_accept_rate_at(
            distance_array, same_array, false_accept_rate=1e-3
        ),
        tar_at_far_1e2=metrics.true_accept_rate_at(
            distance_array, same_array, false_accept_rate=1e-2
        ),
        best_threshold=best.threshold,
        best_accuracy=best.accuracy,
    )


def evaluate_distances(
    measured: PairDistances,
    *,
    threshold: float,
    folds: int = 10,
    images_root: Path | None = None,
) -> EvaluationResult:
    """The evaluation of measured pair distances; example paths are shown relative to
    ``images_root`` when given."""
    both = measured.both_faces
    if not np.any(both):
        raise ValueError(
            f"No pair had a face found in both images ({len(measured.images_without_face)} of "
            f"{measured.images} images without a face); check the images and the model's detector."
        )
    overall = headline_figures(measured.distances, measured.same, threshold=threshold, folds=folds)
    both_same = measured.same[both]
    on_both: HeadlineFigures | None = None
    if np.any(both_same) and not np.all(both_same) and np.count_nonzero(both) >= folds:
        on_both = headline_figures(
            measured.distances[both], both_same, threshold=threshold, folds=folds
        )
    else:
        logger.warning(
            "The %d pairs with both faces found lack a same or a different pair, or are fewer "
            "than %d folds; no figures for them",
            int(np.count_nonzero(both)),
            folds,
        )
    return EvaluationResult(
        **vars(overall),
        images=measured.images,
        images_without_face=len(measured.images_without_face),
        images_without_face_examples=tuple(
            _display_path(path, images_root) for path in measured.images_without_face[:MAX_EXAMPLES]
        ),
        pairs_with_missing_face=int(np.count_nonzero(~both)),
        missing_face_policy=MISSING_FACE_POLICY,
        on_pairs_with_both_faces=on_both,
    )


def evaluate_pairs(
    pairs: Sequence[Pair],
    *,
    embed: EmbedFn,
    threshold: float,
    batch_size: int = 32,
    folds: int = 10,
    images_root: Path | None = None,
) -> EvaluationResult:
    """Embeds the pairs' images with ``embed`` and evaluates them at ``threshold``."""
    measured = pair_distances(pairs, embed=embed, batch_size=batch_size)
    return evaluate_distances(measured, threshold=threshold, folds=folds, images_root=images_root)


def _display_path(path: Path, images_root: Path | None) -> str:
    if images_root is not None:
        for candidate, root in ((path, images_root), (path.resolve(), images_root.resolve())):
            try:
                return candidate.relative_to(root).as_posix()
            except ValueError:
                continue
    return str(path)


def write_report(
    result: EvaluationResult,
    distances: npt.ArrayLike,
    same: npt.ArrayLike,
    *,
    output_dir: Path,
) -> dict[str, Path]:
    """Writes ``evaluation.json``, ``roc.png`` and ``distances.png``; returns their paths by role
    (``evaluation``, ``roc``, ``distances``)."""
    distance_array, same_array = metrics.validate(distances, same)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = output_dir / REPORT_FILE
    # allow_nan=False: every figure is finite by construction, and a non-finite one would make
    # the file invalid JSON for other readers.
    report.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    roc, histogram = output_dir / ROC_FILE, output_dir / DISTANCES_FILE
    _plot_roc(distance_array, same_array, threshold=result.threshold, path=roc)
    _plot_distances(distance_array, same_array, threshold=result.threshold, path=histogram)
    return {"evaluation": report, "roc": roc, "distances": histogram}


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_roc(
    distances: npt.NDArray[np.float64],
    same: npt.NDArray[np.bool_],
    *,
    threshold: float,
    path: Path,
) -> None:
    plt = _pyplot()
    different_pairs = int(np.count_nonzero(~same))
    # FAR = 0 cannot be drawn on a log axis; the axis starts at half the smallest measurable FAR.
    floor = 0.5 / different_pairs
    figure, axes = plt.subplots(figsize=(6, 5))
    try:
        both = np.isfinite(distances)
        curves = [("all pairs (missing face = rejected)", distances, same, "-")]
        if not np.all(both) and np.any(same[both]) and not np.all(same[both]):
            curves.append(("pairs with both faces", distances[both], same[both], "--"))
        lowest = 1.0
        for label, curve_distances, curve_same, style in curves:
            curve = metrics.roc_curve(curve_distances, curve_same)
            lowest = min(
                lowest,
                float(curve.true_accept_rates[curve.false_accept_rates <= floor].max(initial=0.0)),
            )
            auc = metrics.roc_auc(curve_distances, curve_same)
            axes.plot(
                np.maximum(curve.false_accept_rates, floor),
                curve.true_accept_rates,
                style,
                label=f"{label}, AUC {auc:.4f}",
            )
        accepted = distances <= threshold
        far = float(np.mean(accepted[~same]))
        tar = float(np.mean(accepted[same]))
        far_text = f"{far:.2e}" if far > 0 else f"0 (< 1/{different_pairs})"
        axes.plot(
            [max(far, floor)],
            [tar],
            "o",
            color="black",
            clip_on=False,
            label=f"threshold {threshold:.4g}: TAR {tar:.4f} at FAR {far_text}",
        )
        axes.set_xscale("log")
        axes.set_xlim(floor, 1.0)
        # A good model's curve hugs the top; starting the axis just below the curve's lowest
        # drawn point shows the differences that matter.
        bottom = np.floor(max(0.0, min(lowest, tar) - 0.05) * 10.0) / 10.0
        axes.set_ylim(bottom, 1.0 + 0.005 * (1.0 - bottom))
        axes.set_xlabel("false accept rate")
        axes.set_ylabel("true accept rate")
        axes.set_title("ROC (accept when distance <= threshold)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


def _plot_distances(
    distances: npt.NDArray[np.float64],
    same: npt.NDArray[np.bool_],
    *,
    threshold: float,
    path: Path,
) -> None:
    plt = _pyplot()
    finite = np.isfinite(distances)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    try:
        values = distances[finite]
        # Shared bins so the two histograms can be compared bar by bar.
        bins = np.histogram_bin_edges(values, bins=60) if values.size else np.linspace(0, 1, 61)
        for label, mask, color in (
            ("same person", same, "tab:green"),
            ("different people", ~same, "tab:red"),
        ):
            selected = distances[finite & mask]
            axes.hist(
                selected,
                bins=bins.tolist(),
                alpha=0.5,
                color=color,
                label=f"{label} ({selected.size} pairs)",
            )
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
        missing = int(np.count_nonzero(~finite))
        axes.set_title(
            f"Pair distances ({missing} pairs with a missing face not shown)"
            if missing
            else "Pair distances"
        )
        axes.set_xlabel("Euclidean distance between embeddings")
        axes.set_ylabel("pairs")
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


def check_images_exist(pairs: Sequence[Pair], *, images_root: Path) -> None:
    """Raises FileNotFoundError when images are missing, which usually means a wrong root.

    Checked up front, before the model loads: an image without a face is a finding, but a missing
    file is a mistake that would otherwise be reported as thousands of faceless images.
    """
    paths = dict.fromkeys(path for pair in pairs for path in (pair.path_a, pair.path_b))
    missing = [path for path in paths if not path.is_file()]
    if missing:
        examples = ", ".join(str(path) for path in missing[:3])
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images in the pairs do not exist (e.g. {examples}); "
            f"check that the images root {images_root} is the folder the pairs file refers to."
        )


def load_pipeline(model_dir: Path) -> EmbeddingPipeline:
    """The service's ``FacePipeline`` for ``model_dir`` (imports TensorFlow)."""
    from app.pipeline.pipeline import FacePipeline

    return FacePipeline.from_model_dir(model_dir)


def pipeline_embed_fn(pipeline: EmbeddingPipeline) -> EmbedFn:
    """An ``EmbedFn`` that reads each file as bytes and embeds its largest face.

    An image the pipeline rejects (``InputError``: undecodable, too large) or a file that cannot
    be read gives None for that image only: a failing batch is retried image by image.
    """

    def read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError as error:
            logger.warning("Cannot read %s (%s); counted as an image without a face", path, error)
            return None

    def embed_one(path: Path, data: bytes) -> Embedding | None:
        try:
            return pipeline.embed_largest([data])[0]
        except InputError as error:
            logger.warning(
                "%s cannot be used (%s); counted as an image without a face", path, error.code
            )
            return None

    def embed(paths: Sequence[Path]) -> list[Embedding | None]:
        contents = [read(path) for path in paths]
        readable = [index for index, data in enumerate(contents) if data is not None]
        results: list[Embedding | None] = [None] * len(paths)
        batch = [data for data in contents if data is not None]
        try:
            embedded = list(pipeline.embed_largest(batch)) if batch else []
        except InputError:
            # One bad image fails the whole batch; retrying one by one confines it to itself.
            embedded = [
                embed_one(paths[index], batch[position]) for position, index in enumerate(readable)
            ]
        for index, embedding in zip(readable, embedded, strict=True):
            results[index] = embedding
        return results

    return embed


def evaluate_model(
    *,
    model_dir: Path,
    pairs_file: Path,
    images_root: Path,
    output_dir: Path,
    batch_size: int = 32,
    folds: int = 10,
) -> EvaluationResult:
    """Evaluates the model in ``model_dir`` on ``pairs_file`` at its own threshold.

    Writes ``evaluation.json``, ``roc.png`` and ``distances.png`` into ``output_dir``, logs the
    headline figures and returns them.
    """
    pairs = read_pairs(pairs_file, images_root=images_root)
    check_images_exist(pairs, images_root=images_root)
    pipeline = load_pipeline(model_dir)
    threshold = pipeline.metadata.threshold
    logger.info(
        "Evaluating %s on %d pairs from %s at threshold %.4f",
        model_dir,
        len(pairs),
        pairs_file,
        threshold,
    )
    measured = pair_distances(pairs, embed=pipeline_embed_fn(pipeline), batch_size=batch_size)
    result = evaluate_distances(measured, threshold=threshold, folds=folds, images_root=images_root)
    files = write_report(result, measured.distances, measured.same, output_dir=output_dir)
    log_summary(result)
    logger.info("Report written to %s", files["evaluation"])
    return result


def log_summary(result: EvaluationResult) -> None:
    """Logs the headline figures, one line each."""
    logger.info(
        "%d pairs (%d same, %d different), %d images, %d without a face; %d pairs with a missing "
        "face, %s",
        result.pairs,
        result.same_pairs,
        result.different_pairs,
        result.images,
        result.images_without_face,
        result.pairs_with_missing_face,
        result.missing_face_policy,
    )
    for label, figures in (("all pairs", result), ("both faces", result.on_pairs_with_both_faces)):
        if figures is None:
            continue
        logger.info(
            "%s: %d-fold accuracy %.4f +- %.4f, accuracy %.4f at threshold %.4f, AUC %.4f, "
            "EER %.4f at %.4f, TAR %.4f at FAR 1e-3%s, TAR %.4f at FAR 1e-2%s",
            label,
            len(figures.ten_fold_thresholds),
            figures.ten_fold_accuracy,
            figures.ten_fold_accuracy_std,
            figures.accuracy_at_threshold,
            figures.threshold,
            figures.roc_auc,
            figures.equal_error_rate,
            figures.equal_error_rate_threshold,
            figures.tar_at_far_1e3.tar,
            "" if figures.tar_at_far_1e3.measurable else " (not measurable)",
            figures.tar_at_far_1e2.tar,
            "" if figures.tar_at_far_1e2.measurable else " (not measurable)",
        )
