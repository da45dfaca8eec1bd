"""Train a Siamese embedding tower on prepared chips, then calibrate, evaluate and export it.

``train`` runs in a run folder (``runs/<name>/`` by default)::

    config.json         the training configuration and the data's fingerprint (checked on --resume)
    state.json          epochs done, the phase, the best validation score and the history
    log.csv             one row per epoch (Keras' CSVLogger): loss, validation figures, images/s
    tensorboard/        TensorBoard logs
    checkpoints/        last.weights.h5 (Siamese model and optimizer), last_tower.weights.h5,
                        best_tower.weights.h5

Transfer learning runs in two phases: ``--freeze-epochs`` epochs with the backbone frozen (only the
head learns, at ``--head-learning-rate``), then the backbone (or its top ``--unfreeze-layers``
layers) learns too at ``--learning-rate``. Each epoch draws fresh balanced pairs
(``training.data.sampler``). After every epoch the tower embeds the validation split and the ROC
AUC on fixed validation pairs decides which weights are the best; the starting weights are scored
first and count as a candidate, so fine-tuning never ends with weights that validate worse than
where it began. Early stopping ends the run after ``--patience`` epochs without improvement.

Finishing (``finalize_run``, also ``python -m training export``) rebuilds the best tower in
float32, calibrates the threshold and the Platt scaling on pairs of the validation split,
evaluates on pairs of the test split at that threshold, and exports ``models/<name>/<version>/``
with everything in ``metadata.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import numpy.typing as npt

from app.pipeline.embed import flip_averaged
from app.pipeline.metadata import (
    AlignmentInfo,
    ModelMetadata,
    Provenance,
    model_version_dir,
)
from training import metrics
from training.data.records import (
    ChipFormat,
    PreparedManifest,
    SplitData,
    decode_chip_tensor,
    load_split,
    read_manifest,
    write_json_atomically,
)
from training.data.sampler import PairIndices, PairSampler
from training.model import Phase, TowerConfig

logger = logging.getLogger(__name__)

TRAINER = "training.train"
# Bump when a change to training makes earlier runs' results incomparable.
TRAINER_VERSION = "1"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
LOG_FILE = "log.csv"
CHECKPOINTS = "checkpoints"
LAST_WEIGHTS = "last.weights.h5"
LAST_TOWER_WEIGHTS = "last_tower.weights.h5"
BEST_TOWER_WEIGHTS = "best_tower.weights.h5"
# Settings that may change between a run and its --resume; any other change refuses to resume.
RESUMABLE_CHANGES = frozenset(
    {
        # Moved folders are fine: the data is recognised by its fingerprint.
        "data_dir",
        "run_dir",
        "epochs",
        "patience",
        "resume",
        "overwrite",
        "export",
        "models_root",
        "model_name",
        "model_version",
        "verbose",
    }
)

Precision = Literal["auto", "mixed_float16", "float32"]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; written to ``config.json``."""

    data_dir: Path
    run_dir: Path
    tower: TowerConfig = field(default_factory=TowerConfig)
    margin: float = 1.0
    batch_size: int = 32
    epochs: int = 10
    freeze_epochs: int = 1
    head_learning_rate: float = 1e-3
    learning_rate: float = 1e-5
    unfreeze_layers: int = 0
    weight_decay: float = 0.0
    pairs_per_epoch: int | None = None
    hard_negative_fraction: float = 0.0
    hard_negative_pool: int = 2048
    validation_pairs: int = 2000
    patience: int = 3
    augment: bool = True
    flip_augmentation: bool = True
    precision: Precision = "auto"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    export: bool = True
    models_root: Path = Path("models")
    model_name: str = "siamese_dlib_resnet"
    model_version: int = 1
    verbose: int = 1

    def __post_init__(self) -> None:
        checks = (
            (self.margin > 0, f"--margin must be positive, got {self.margin}."),
            (self.batch_size >= 2, f"--batch-size must be at least 2, got {self.batch_size}."),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (
                0 <= self.freeze_epochs <= self.epochs,
                f"--freeze-epochs must be between 0 and --epochs ({self.epochs}), "
                f"got {self.freeze_epochs}.",
            ),
            (self.head_learning_rate > 0, "--head-learning-rate must be positive."),
            (self.learning_rate > 0, "--learning-rate must be positive."),
            (self.unfreeze_layers >= 0, "--unfreeze-layers must be 0 (all) or more."),
            (self.weight_decay >= 0, "--weight-decay must not be negative."),
            (
                self.pairs_per_epoch is None or self.pairs_per_epoch >= 2,
                "--pairs-per-epoch must be at least 2.",
            ),
            (
                0.0 <= self.hard_negative_fraction <= 1.0,
                "--hard-negatives must be a fraction between 0 and 1.",
            ),
            (self.validation_pairs >= 20, "--validation-pairs must be at least 20."),
            (self.patience >= 1, f"--patience must be at least 1, got {self.patience}."),
            (self.precision in ("auto", "mixed_float16", "float32"), "unknown --precision."),
            (self.model_version >= 1, "--version must be a positive integer."),
            (
                bool(self.model_name) and "/" not in self.model_name,
                f"--name must be a plain folder name, got {self.model_name!r}.",
            ),
        )
        for valid, message in checks:
            if not valid:
                raise ValueError(message)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; choose one.")

    def to_dict(self) -> dict[str, Any]:
        values = {
            item.name: getattr(self, item.name)
            for item in dataclasses.fields(self)
            if item.name != "tower"
        }
        values["data_dir"] = str(self.data_dir)
        values["run_dir"] = str(self.run_dir)
        values["models_root"] = str(self.models_root)
        values["tower"] = self.tower.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        arguments = {key: value for key, value in values.items() if key in known}
        arguments["data_dir"] = Path(values["data_dir"])
        arguments["run_dir"] = Path(values["run_dir"])
        if "models_root" in values:
            arguments["models_root"] = Path(values["models_root"])
        arguments["tower"] = TowerConfig.from_dict(values["tower"])
        return cls(**arguments)


@dataclass
class RunState:
    """Where a run stands; rewritten after every epoch."""

    epochs_done: int = 0
    phase: str = ""
    baseline: dict[str, float] = field(default_factory=dict)
    best_score: float = -np.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunState:
        return cls(**values)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    state: RunState
    export_dir: Path | None


# --------------------------------------------------------------------------------------------
# Devices, precision and distribution


def configure_precision(precision: Precision) -> str:
    """Sets Keras' global dtype policy; ``auto`` means mixed_float16 when a GPU is visible.

    Returns the policy's name. Must run before any model is built.
    """
    import tensorflow as tf

    if precision == "auto":
        precision = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return precision


def distribution_strategy() -> Any:
    """``MirroredStrategy`` over all GPUs when there are several, else the default strategy."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        logger.info("Training on %d GPUs with MirroredStrategy", strategy.num_replicas_in_sync)
        return strategy
    return tf.distribute.get_strategy()


# --------------------------------------------------------------------------------------------
# Input pipeline


def _decode(encoded: Any, size: tuple[int, int], chip_format: ChipFormat) -> Any:
    import tensorflow as tf

    image = decode_chip_tensor(encoded, chip_format=chip_format)
    image.set_shape((size[0], size[1], 3))
    return tf.cast(image, tf.float32)


def _augment(image: Any, seed: Any) -> Any:
    """Mirror, brightness and contrast jitter, seeded per image; geometry stays as aligned."""
    import tensorflow as tf

    image = tf.image.stateless_random_flip_left_right(image, seed=seed)
    image = tf.image.stateless_random_brightness(image, max_delta=20.0, seed=seed + 1)
    image = tf.image.stateless_random_contrast(image, lower=0.8, upper=1.2, seed=seed + 2)
    return tf.clip_by_value(image, 0.0, 255.0)


def pair_dataset(
    chips: Any,
    pairs: PairIndices,
    *,
    chip_size: tuple[int, int],
    chip_format: ChipFormat,
    batch_size: int,
    augment: bool,
    seed: int,
    epoch: int,
) -> Any:
    """A ``tf.data`` pipeline of ``((image_a, image_b), same)`` batches for ``fit``.

    ``chips`` is a string tensor of every encoded chip of the split; pairs index into it.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(
        (pairs.first, pairs.second, pairs.same.astype(np.float32))
    ).enumerate()

    def load(position: Any, example: Any) -> Any:
        first, second, same = example
        image_a = _decode(tf.gather(chips, first), chip_size, chip_format)
        image_b = _decode(tf.gather(chips, second), chip_size, chip_format)
        if augment:
            base = tf.stack([tf.cast(seed * 100_003 + epoch, tf.int64), position * 8])
            image_a = _augment(image_a, base)
            image_b = _augment(image_b, base + [0, 4])
        return (image_a, image_b), same

    options = tf.data.Options()
    options.deterministic = True
    return (
        dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def embed_split(
    embed: Callable[[FloatArray], npt.ArrayLike],
    chips: npt.NDArray[np.object_],
    *,
    chip_size: tuple[int, int],
    chip_format: ChipFormat,
    flip: bool,
    batch_size: int = 64,
) -> FloatArray:
    """Embeddings of encoded chips, decoded in a ``tf.data`` pipeline, flip-averaged if asked."""
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices(tf.constant(list(chips), dtype=tf.string))
        .map(
            lambda encoded: _decode(encoded, chip_size, chip_format),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    outputs: list[FloatArray] = []
    for batch in dataset.as_numpy_iterator():
        values = flip_averaged(embed, batch) if flip else np.asarray(embed(batch), np.float32)
        outputs.append(values)
    if not outputs:
        raise ValueError("The split has no chips to embed.")
    return np.concatenate(outputs).astype(np.float32)


def split_pairs(identities: npt.ArrayLike, *, count: int, seed: int) -> PairIndices:
    """Up to ``count`` fixed, distinct, balanced pairs of a split (validation, calibration, test).

    Pairs are drawn as in training, then repeats (in either order) are dropped and the larger
    class is cut to the size of the smaller, so a small split gives fewer pairs, never repeats.
    """
    drawn = PairSampler(identities, seed=seed, pairs_per_epoch=count).epoch_pairs(0)
    low = np.minimum(drawn.first, drawn.second)
    high = np.maximum(drawn.first, drawn.second)
    _, first_seen = np.unique(np.stack([low, high], axis=1), axis=0, return_index=True)
    unique = np.sort(first_seen)
    same = drawn.same[unique] > 0.5
    kept_per_class = min(int(np.count_nonzero(same)), int(np.count_nonzero(~same)))
    kept = np.sort(np.concatenate([unique[same][:kept_per_class], unique[~same][:kept_per_class]]))
    return PairIndices(first=drawn.first[kept], second=drawn.second[kept], same=drawn.same[kept])


def pair_distances_of(embeddings: FloatArray, pairs: PairIndices) -> npt.NDArray[np.float64]:
    difference = embeddings[pairs.first].astype(np.float64) - embeddings[pairs.second]
    return np.asarray(np.sqrt(np.sum(difference**2, axis=1)), dtype=np.float64)


def contrastive_loss_value(
    distances: npt.ArrayLike, same: npt.ArrayLike, *, margin: float
) -> float:
    """The contrastive loss of ``training.model.ContrastiveLoss``, in NumPy, for validation."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same, dtype=np.float64)
    return float(np.mean(y * d**2 + (1 - y) * np.maximum(margin - d, 0.0) ** 2))


def validation_figures(
    embeddings: FloatArray, pairs: PairIndices, *, margin: float
) -> dict[str, float]:
    distances = pair_distances_of(embeddings, pairs)
    same = pairs.same.astype(bool)
    best = metrics.best_threshold(distances, same)
    return {
        "val_auc": metrics.roc_auc(distances, same),
        "val_accuracy": best.accuracy,
        "val_threshold": best.threshold,
        "val_loss": contrastive_loss_value(distances, same, margin=margin),
    }


# --------------------------------------------------------------------------------------------
# The run


def check_splits(manifest: PreparedManifest) -> None:
    """Every split must give same-person and different-person pairs: two or more people, one of
    them with two or more chips. Checked before training, not after it."""
    for split, info in manifest.splits.items():
        if info.identities < 2 or info.chips <= info.identities:
            raise ValueError(
                f"The {split} split has {info.chips} chips of {info.identities} people; pairs "
                "need at least two people, one of them with two or more chips. Prepare the data "
                "with larger --validation-fraction/--test-fraction or more photos per person."
            )


def _check_run_dir(config: TrainConfig, manifest: PreparedManifest) -> RunState | None:
    """Prepares the run folder; returns the state to resume from, or None for a fresh run."""
    run_dir = config.run_dir
    config_file = run_dir / CONFIG_FILE
    state_file = run_dir / STATE_FILE
    if config.resume:
        if not state_file.is_file():
            raise ValueError(f"{run_dir} holds no run to resume; drop --resume to start one.")
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        if saved.get("data_fingerprint") != manifest.fingerprint:
            raise ValueError(
                f"The prepared data in {config.data_dir} changed since {run_dir} started "
                "(its fingerprint differs); start a new run."
            )
        current = config.to_dict()
        changed = sorted(
            key
            for key in current
            if key not in RESUMABLE_CHANGES and saved["config"].get(key) != current[key]
        )
        if changed:
            raise ValueError(
                f"--resume needs the settings {run_dir} started with; these differ: "
                f"{', '.join(changed)}. Only {', '.join(sorted(RESUMABLE_CHANGES))} may change."
            )
        write_json_atomically(config_file, {**saved, "config": current})
        return RunState.from_dict(json.loads(state_file.read_text(encoding="utf-8")))
    if run_dir.exists() and any(run_dir.iterdir()):
        if not config.overwrite:
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or --overwrite "
                "to start over."
            )
        shutil.rmtree(run_dir)
    (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    write_json_atomically(
        config_file,
        {
            "trainer": TRAINER,
            "trainer_version": TRAINER_VERSION,
            "config": config.to_dict(),
            "data_fingerprint": manifest.fingerprint,
        },
    )
    return None


def train(config: TrainConfig) -> TrainResult:
    """Runs (or resumes) training, then finalises and exports unless ``config.export`` is off."""
    import tensorflow as tf

    manifest = read_manifest(config.data_dir)
    if tuple(manifest.chip_size) != tuple(config.tower.input_size):
        raise ValueError(
            f"The prepared chips are {manifest.chip_size[0]}x{manifest.chip_size[1]} but the "
            f"tower takes {config.tower.input_size[0]}x{config.tower.input_size[1]}; prepare the "
            "data for this input size or set --input-size to match."
        )
    check_splits(manifest)
    destination = model_version_dir(config.models_root, config.model_name, config.model_version)
    if config.export and destination.exists() and not config.overwrite:
        # Found now rather than after hours of training.
        raise FileExistsError(
            f"{destination} already exists; choose another --version or --name, or pass "
            "--overwrite to replace it (or --no-export)."
        )
    resumed = _check_run_dir(config, manifest)
    state = resumed if resumed is not None else RunState()
    if state.epochs_done >= config.epochs or state.stopped_early:
        logger.info("%s is complete (%d epochs done)", config.run_dir, state.epochs_done)
        export_dir = _export(config) if config.export else None
        return TrainResult(run_dir=config.run_dir, state=state, export_dir=export_dir)

    keras.utils.set_random_seed(config.seed)
    policy = configure_precision(config.precision)
    strategy = distribution_strategy()
    replicas = strategy.num_replicas_in_sync
    logger.info(
        "Precision policy %s, %d replica(s), global batch of %d pairs",
        policy,
        replicas,
        config.batch_size,
    )

    train_data = load_split(config.data_dir, "train")
    validation_data = load_split(config.data_dir, "validation")
    chip_size = (int(manifest.chip_size[0]), int(manifest.chip_size[1]))
    sampler = PairSampler(
        train_data.identities,
        seed=config.seed,
        pairs_per_epoch=config.pairs_per_epoch,
        hard_negative_fraction=config.hard_negative_fraction,
        hard_negative_pool=config.hard_negative_pool,
    )
    validation_pairs = split_pairs(
        validation_data.identities, count=config.validation_pairs, seed=config.seed + 1
    )
    logger.info(
        "%d training chips of %d identities, %d pairs per epoch; %d validation chips, %d pairs",
        len(train_data),
        len(np.unique(train_data.identities)),
        sampler.pairs_per_epoch,
        len(validation_data),
        len(validation_pairs),
    )
    train_chips = tf.constant(list(train_data.chips), dtype=tf.string)

    from training.model import ContrastiveLoss, build_siamese, build_tower, set_phase

    with strategy.scope():
        tower = build_tower(config.tower, pretrained=resumed is None)
        siamese = build_siamese(tower)
    checkpoints = config.run_dir / CHECKPOINTS
    if resumed is not None and state.epochs_done == 0:
        # Interrupted before its first epoch ended: start again from the saved starting weights.
        tower.load_weights(checkpoints / BEST_TOWER_WEIGHTS)

    def validate() -> dict[str, float]:
        embeddings = embed_split(
            lambda batch: tower(batch, training=False),
            validation_data.chips,
            chip_size=chip_size,
            chip_format=manifest.chip_format,
            flip=config.flip_augmentation,
        )
        return validation_figures(embeddings, validation_pairs, margin=config.margin)

    if resumed is None:
        state.baseline = validate()
        state.best_score = state.baseline["val_auc"]
        tower.save_weights(checkpoints / BEST_TOWER_WEIGHTS)
        logger.info(
            "Starting weights: validation AUC %.4f, accuracy %.4f",
            state.baseline["val_auc"],
            state.baseline["val_accuracy"],
        )
        write_json_atomically(config.run_dir / STATE_FILE, state.to_dict())

    phase = ""
    for epoch in range(state.epochs_done, config.epochs):
        wanted: Phase = "head" if epoch < config.freeze_epochs else "full"
        if wanted != phase:
            with strategy.scope():
                trainable = set_phase(tower, wanted, backbone_layers=config.unfreeze_layers)
                rate = config.head_learning_rate if wanted == "head" else config.learning_rate
                optimizer = (
                    keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay)
                    if config.weight_decay
                    else keras.optimizers.Adam(learning_rate=rate)
                )
                siamese.compile(optimizer=optimizer, loss=ContrastiveLoss(margin=config.margin))
                optimizer.build(siamese.trainable_variables)
            logger.info(
                "Epoch %d: %s phase, %d trainable weights, learning rate %g",
                epoch + 1,
                wanted,
                trainable,
                rate,
            )
            if resumed is not None and epoch == state.epochs_done and epoch > 0:
                # The optimizer's state is only worth restoring within the phase it belongs to.
                if state.phase == wanted:
                    siamese.load_weights(checkpoints / LAST_WEIGHTS)
                else:
                    tower.load_weights(checkpoints / LAST_TOWER_WEIGHTS)
                logger.info("Resumed %s after epoch %d", config.run_dir, epoch)
            phase = wanted

        candidates = sampler.hard_negative_candidates(epoch)
        candidate_embeddings = None
        if candidates.size:
            candidate_embeddings = embed_split(
                lambda batch: tower(batch, training=False),
                train_data.chips[candidates],
                chip_size=chip_size,
                chip_format=manifest.chip_format,
                flip=False,
            )
        pairs = sampler.epoch_pairs(epoch, candidate_embeddings=candidate_embeddings)
        dataset = pair_dataset(
            train_chips,
            pairs,
            chip_size=chip_size,
            chip_format=manifest.chip_format,
            batch_size=config.batch_size,
            augment=config.augment,
            seed=config.seed,
            epoch=epoch,
        )
        epoch_callback = _EpochFigures(validate=validate, images=2 * len(pairs))
        callbacks = [
            epoch_callback,
            keras.callbacks.CSVLogger(str(config.run_dir / LOG_FILE), append=True),
            keras.callbacks.TensorBoard(log_dir=str(config.run_dir / "tensorboard")),
        ]
        siamese.fit(
            dataset,
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=callbacks,
            shuffle=False,  # the pairs come shuffled and seeded by the sampler
            verbose=config.verbose,
        )
        figures = epoch_callback.figures
        siamese.save_weights(checkpoints / LAST_WEIGHTS)
        tower.save_weights(checkpoints / LAST_TOWER_WEIGHTS)
        state.epochs_done = epoch + 1
        state.phase = phase
        state.history.append({"epoch": epoch + 1, **figures})
        if figures["val_auc"] > state.best_score:
            state.best_score = figures["val_auc"]
            state.best_epoch = epoch + 1
            state.epochs_without_improvement = 0
            tower.save_weights(checkpoints / BEST_TOWER_WEIGHTS)
        else:
            state.epochs_without_improvement += 1
        logger.info(
            "Epoch %d: loss %.4f, validation AUC %.4f (best %.4f after epoch %d), %.1f images/s",
            epoch + 1,
            figures["loss"],
            figures["val_auc"],
            state.best_score,
            state.best_epoch,
            figures["images_per_second"],
        )
        if state.epochs_without_improvement >= config.patience:
            state.stopped_early = True
            logger.info("No improvement for %d epochs; stopping early", config.patience)
        write_json_atomically(config.run_dir / STATE_FILE, state.to_dict())
        if state.stopped_early:
            break

    if state.best_epoch == 0:
        logger.warning(
            "No epoch beat the starting weights on validation (AUC %.4f); the export keeps them",
            state.best_score,
        )
    export_dir = _export(config) if config.export else None
    return TrainResult(run_dir=config.run_dir, state=state, export_dir=export_dir)


class _EpochFigures(keras.callbacks.Callback):  # type: ignore[misc]
    """Adds validation figures and training throughput to the epoch's logs, before the CSV and
    TensorBoard callbacks (which come after it) write them."""

    def __init__(self, *, validate: Callable[[], dict[str, float]], images: int) -> None:
        super().__init__()
        self._validate = validate
        self._images = images
        self._started = 0.0
        self.figures: dict[str, float] = {}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._started
        logs = logs if logs is not None else {}
        logs["images_per_second"] = self._images / seconds
        logs.update(self._validate())
        self.figures = {key: float(value) for key, value in logs.items()}


# --------------------------------------------------------------------------------------------
# Calibration, evaluation and export


def _export(config: TrainConfig) -> Path:
    return finalize_run(
        config.run_dir,
        models_root=config.models_root,
        name=config.model_name,
        version=config.model_version,
        overwrite=config.overwrite,
    )


def read_run(run_dir: Path) -> tuple[TrainConfig, RunState, dict[str, Any]]:
    """A run's configuration, state and raw ``config.json``."""
    config_file = run_dir / CONFIG_FILE
    state_file = run_dir / STATE_FILE
    if not config_file.is_file() or not state_file.is_file():
        raise FileNotFoundError(f"{run_dir} holds no training run (config.json and state.json).")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(raw["config"])
    state = RunState.from_dict(json.loads(state_file.read_text(encoding="utf-8")))
    return config, state, raw


def chip_split_distances(
    embed: Callable[[FloatArray], npt.ArrayLike],
    data: SplitData,
    *,
    chip_size: tuple[int, int],
    chip_format: ChipFormat,
    flip: bool,
    pairs: int,
    seed: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Distances and labels of seeded balanced pairs of one prepared split."""
    chosen = split_pairs(data.identities, count=pairs, seed=seed)
    embeddings = embed_split(
        embed, data.chips, chip_size=chip_size, chip_format=chip_format, flip=flip
    )
    return pair_distances_of(embeddings, chosen), chosen.same.astype(bool)


def finalize_run(
    run_dir: Path,
    *,
    models_root: Path = Path("models"),
    name: str | None = None,
    version: int = 1,
    calibration_pairs: int = 6000,
    test_pairs: int = 6000,
    overwrite: bool = False,
) -> Path:
    """Calibrates the run's best tower on validation pairs, evaluates it on test pairs and exports
    ``<models_root>/<name>/<version>/``; returns that folder.

    The tower is rebuilt in float32 whatever it trained in, so the export serves on any CPU.
    """
    import tensorflow as tf

    from training.calibrate import calibrate, calibration_to_metadata
    from training.evaluate import PairDistances, evaluate_distances, write_report
    from training.export import export_saved_model
    from training.model import build_tower

    config, state, raw = read_run(run_dir)
    manifest = read_manifest(config.data_dir)
    if manifest.fingerprint != raw.get("data_fingerprint"):
        raise ValueError(
            f"The prepared data in {config.data_dir} changed since {run_dir} was trained."
        )
    name = name if name is not None else config.model_name
    destination = model_version_dir(models_root, name, version)
    if destination.exists() and not overwrite:
        raise FileExistsError(
            f"{destination} already exists; export as another version (--version) or pass "
            "--overwrite to replace it."
        )
    keras.mixed_precision.set_global_policy("float32")
    tower = build_tower(config.tower, pretrained=False)
    tower.load_weights(run_dir / CHECKPOINTS / BEST_TOWER_WEIGHTS)
    chip_size = (int(manifest.chip_size[0]), int(manifest.chip_size[1]))

    def embed(batch: FloatArray) -> FloatArray:
        return np.asarray(tower(batch, training=False), dtype=np.float32)

    validation = load_split(config.data_dir, "validation")
    distances, same = chip_split_distances(
        embed,
        validation,
        chip_size=chip_size,
        chip_format=manifest.chip_format,
        flip=config.flip_augmentation,
        pairs=calibration_pairs,
        seed=config.seed + 2,
    )
    calibration = calibrate(
        distances,
        same,
        source=f"{distances.size} pairs of the validation split of {config.data_dir} "
        f"(data fingerprint {manifest.fingerprint[:12]})",
    )
    test = load_split(config.data_dir, "test")
    test_distances, test_same = chip_split_distances(
        embed,
        test,
        chip_size=chip_size,
        chip_format=manifest.chip_format,
        flip=config.flip_augmentation,
        pairs=test_pairs,
        seed=config.seed + 3,
    )
    result = evaluate_distances(
        PairDistances(
            distances=test_distances, same=test_same, images=len(test), images_without_face=()
        ),
        threshold=calibration.threshold,
    )
    write_report(result, test_distances, test_same, output_dir=run_dir / "evaluation")
    evaluation = {
        **result.to_dict(),
        "pairs_source": f"{test_distances.size} pairs of the test split of {config.data_dir}",
        "faces_not_found_in_split": manifest.splits["test"].missing_faces,
    }
    alignment = AlignmentInfo.model_validate(
        {**manifest.alignment.model_dump(), "flip_augmentation": config.flip_augmentation}
    )
    metadata = ModelMetadata(
        name=name,
        version=version,
        input_size=chip_size,
        embedding_size=int(tower.output_shape[-1]),
        threshold=calibration.threshold,
        threshold_source=(
            f"calibrated by training.calibrate: the distance with the best accuracy "
            f"({calibration.accuracy:.2%}) on {calibration.source}"
        ),
        alignment=alignment,
        calibration=calibration_to_metadata(calibration),
        evaluation=evaluation,
        training={
            "config": raw["config"],
            "data_fingerprint": manifest.fingerprint,
            "data": {split: info.model_dump() for split, info in manifest.splits.items()},
            "epochs_done": state.epochs_done,
            "best_epoch": state.best_epoch,
            "baseline": state.baseline,
            "history": state.history,
        },
        provenance=Provenance(
            source=f"training run {run_dir}",
            source_sha256=manifest.fingerprint,
            converter=TRAINER,
            converter_version=TRAINER_VERSION,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            frameworks={"tensorflow": tf.__version__, "keras": keras.__version__},
            license=None,
        ),
    )
    export_saved_model(tower, directory=destination, metadata=metadata, overwrite=overwrite)
    check_export(destination, tower, test)
    logger.info(
        "Exported %s: threshold %.4f, test accuracy %.4f at it, AUC %.4f",
        destination,
        calibration.threshold,
        result.accuracy_at_threshold,
        result.roc_auc,
    )
    return destination


def check_export(
    export_dir: Path,
    tower: Any,
    data: SplitData,
    *,
    chips: int = 8,
    tolerance: float = 1e-4,
) -> float:
    """Reloads the export as the service does and compares it with the in-memory tower.

    Raises ``RuntimeError`` when they disagree by more than ``tolerance``; returns the largest
    difference.
    """
    from app.pipeline.embed import Embedder
    from training.data.records import decode_chip

    sample = np.stack([decode_chip(encoded) for encoded in data.chips[:chips]])
    served = Embedder(export_dir).embed(sample)
    expected = np.asarray(tower(sample.astype(np.float32), training=False))
    difference = float(np.max(np.abs(served - expected)))
    if difference > tolerance:
        raise RuntimeError(
            f"The export in {export_dir} disagrees with the trained tower by {difference:.3g} "
            f"(more than {tolerance}); do not deploy it."
        )
    return difference


@dataclass(frozen=True)
class _ExportedSplit:
    """An exported model's distances on seeded pairs of a prepared split."""

    metadata: ModelMetadata
    manifest: PreparedManifest
    images: int
    distances: npt.NDArray[np.float64]
    same: npt.NDArray[np.bool_]


def _exported_split_distances(
    *, model_dir: Path, data_dir: Path, split: str, pairs: int, seed: int
) -> _ExportedSplit:
    """Embeds a split's chips with an export, as the service embeds chips (flip-averaged when its
    metadata says so), and measures seeded balanced pairs."""
    from app.pipeline.embed import Embedder

    embedder = Embedder(model_dir)
    manifest = read_manifest(data_dir)
    _check_chip_size(embedder.metadata, manifest)
    alignment = embedder.metadata.alignment
    data = load_split(data_dir, split)
    distances, same = chip_split_distances(
        embedder.embed,
        data,
        chip_size=embedder.metadata.input_size,
        chip_format=manifest.chip_format,
        flip=bool(alignment and alignment.flip_augmentation),
        pairs=pairs,
        seed=seed,
    )
    return _ExportedSplit(
        metadata=embedder.metadata,
        manifest=manifest,
        images=len(data),
        distances=distances,
        same=same,
    )


def evaluate_on_split(
    *, model_dir: Path, data_dir: Path, split: str, pairs: int, seed: int, output_dir: Path
) -> dict[str, Any]:
    """Evaluates an exported model on seeded pairs of a prepared split, at its own threshold."""
    from training.evaluate import PairDistances, evaluate_distances, log_summary, write_report

    measured = _exported_split_distances(
        model_dir=model_dir, data_dir=data_dir, split=split, pairs=pairs, seed=seed
    )
    result = evaluate_distances(
        PairDistances(
            distances=measured.distances,
            same=measured.same,
            images=measured.images,
            images_without_face=(),
        ),
        threshold=measured.metadata.threshold,
    )
    write_report(result, measured.distances, measured.same, output_dir=output_dir)
    log_summary(result)
    return result.to_dict()


def calibrate_on_split(
    *, model_dir: Path, data_dir: Path, split: str, pairs: int, seed: int
) -> dict[str, Any]:
    """Calibrates an exported model on seeded pairs of a prepared split; rewrites its metadata."""
    from training.calibrate import apply_calibration, calibrate

    measured = _exported_split_distances(
        model_dir=model_dir, data_dir=data_dir, split=split, pairs=pairs, seed=seed
    )
    calibration = calibrate(
        measured.distances,
        measured.same,
        source=f"{measured.distances.size} pairs of the {split} split of {data_dir} "
        f"(data fingerprint {measured.manifest.fingerprint[:12]})",
    )
    apply_calibration(model_dir, calibration)
    return dataclasses.asdict(calibration)


def _check_chip_size(metadata: ModelMetadata, manifest: PreparedManifest) -> None:
    if tuple(metadata.input_size) != tuple(manifest.chip_size):
        raise ValueError(
            f"The model takes {metadata.input_size[0]}x{metadata.input_size[1]} chips but the "
            f"prepared data holds {manifest.chip_size[0]}x{manifest.chip_size[1]}."
        )
    if metadata.alignment is not None and tuple(metadata.alignment.template) != tuple(
        manifest.alignment.template
    ):
        logger.warning(
            "The model's alignment template differs from the one the data was prepared with; "
            "its figures will not match serving"
        )


def summarize_history(history: list[dict[str, float]]) -> str:
    """One line per epoch, for the log."""
    return "\n".join(
        f"epoch {int(row['epoch'])}: loss {row['loss']:.4f}, validation AUC {row['val_auc']:.4f}, "
        f"{row['images_per_second']:.1f} images/s"
        for row in history
    )
