"""``python -m training <command>``: thin argument parsing; the work lives in the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("training")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class ImportDlibConfig:
    models_root: Path
    source: Path | None
    version: int
    force: bool

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"--version must be a positive integer, got {self.version}.")
        if self.source is not None and not self.source.is_file():
            raise ValueError(
                f"--source {self.source} is not a file; omit it to use the packaged one."
            )


def _import_dlib(args: argparse.Namespace) -> None:
    from training.import_dlib import import_dlib

    config = ImportDlibConfig(
        models_root=args.models_root, source=args.source, version=args.version, force=args.force
    )
    destination = import_dlib(
        models_root=config.models_root,
        source=config.source,
        version=config.version,
        force=config.force,
    )
    logger.info("Default model ready at %s", destination)


@dataclass(frozen=True)
class DeriveTemplateConfig:
    images: Path
    identities: Path
    model_dir: Path
    faces: int
    seed: int
    output: Path | None

    def __post_init__(self) -> None:
        if not self.images.is_dir():
            raise ValueError(f"--images {self.images} is not a folder of photos.")
        if not self.identities.is_file():
            raise ValueError(f"--identities {self.identities} is not a file (identity_CelebA.txt).")
        if self.faces < 10:
            raise ValueError(f"--faces must be at least 10 for a stable mean, got {self.faces}.")


def _derive_template(args: argparse.Namespace) -> None:
    from training.derive_template import run_derivation

    config = DeriveTemplateConfig(
        images=args.images,
        identities=args.identities,
        model_dir=args.model,
        faces=args.faces,
        seed=args.seed,
        output=args.output,
    )
    result = run_derivation(
        images_dir=config.images,
        identity_file=config.identities,
        model_dir=config.model_dir,
        faces=config.faces,
        seed=config.seed,
    )
    text = json.dumps(result, indent=2)
    if config.output is not None:
        config.output.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")


@dataclass(frozen=True)
class PairsInputConfig:
    model: Path
    pairs: Path
    images: Path
    batch_size: int

    def __post_init__(self) -> None:
        if not (self.model / "metadata.json").is_file():
            raise ValueError(f"--model {self.model} holds no metadata.json; is it a model folder?")
        if not self.pairs.is_file():
            raise ValueError(f"--pairs {self.pairs} is not a file.")
        if not self.images.is_dir():
            raise ValueError(f"--images {self.images} is not a folder.")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}.")


@dataclass(frozen=True)
class SplitInputConfig:
    model: Path
    data: Path
    split: str
    pairs: int
    seed: int

    def __post_init__(self) -> None:
        if not (self.model / "metadata.json").is_file():
            raise ValueError(f"--model {self.model} holds no metadata.json; is it a model folder?")
        if not (self.data / "manifest.json").is_file():
            raise ValueError(
                f"--data {self.data} holds no manifest.json; run `python -m training prepare`."
            )
        if self.pairs < 20:
            raise ValueError(f"--split-pairs must be at least 20, got {self.pairs}.")


def _split_input(args: argparse.Namespace, default_split: str) -> SplitInputConfig | None:
    """The prepared-split input, or None when pairs and images are given instead."""
    if args.data is None:
        if args.pairs is None or args.images is None:
            raise ValueError("Give --pairs and --images, or --data with a prepared dataset.")
        return None
    if args.pairs is not None or args.images is not None:
        raise ValueError("--data replaces --pairs and --images; give one or the other.")
    return SplitInputConfig(
        model=args.model,
        data=args.data,
        split=args.split or default_split,
        pairs=args.split_pairs,
        seed=args.seed,
    )


def _evaluate(args: argparse.Namespace) -> None:
    output = args.output if args.output is not None else Path("runs") / "evaluation"
    split_input = _split_input(args, "test")
    if split_input is not None:
        from training.train import evaluate_on_split

        figures = evaluate_on_split(
            model_dir=split_input.model,
            data_dir=split_input.data,
            split=split_input.split,
            pairs=split_input.pairs,
            seed=split_input.seed,
            output_dir=output,
        )
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
        return

    from training.evaluate import evaluate_model

    config = PairsInputConfig(
        model=args.model, pairs=args.pairs, images=args.images, batch_size=args.batch_size
    )
    result = evaluate_model(
        model_dir=config.model,
        pairs_file=config.pairs,
        images_root=config.images,
        output_dir=output,
        batch_size=config.batch_size,
    )
    sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")


def _calibrate(args: argparse.Namespace) -> None:
    split_input = _split_input(args, "validation")
    if split_input is not None:
        from training.train import calibrate_on_split

        calibrated = calibrate_on_split(
            model_dir=split_input.model,
            data_dir=split_input.data,
            split=split_input.split,
            pairs=split_input.pairs,
            seed=split_input.seed,
        )
        sys.stdout.write(json.dumps(calibrated, indent=2, default=str) + "\n")
        return

    from training.calibrate import calibrate_model

    config = PairsInputConfig(
        model=args.model, pairs=args.pairs, images=args.images, batch_size=args.batch_size
    )
    calibration = calibrate_model(
        model_dir=config.model,
        pairs_file=config.pairs,
        images_root=config.images,
        batch_size=config.batch_size,
    )
    sys.stdout.write(json.dumps(dataclasses.asdict(calibration), indent=2) + "\n")


@dataclass(frozen=True)
class MakePairsConfig:
    identities: Path
    images: Path
    output: Path
    same: int
    different: int
    split: str
    split_seed: int
    seed: int

    def __post_init__(self) -> None:
        if not self.identities.is_file():
            raise ValueError(f"--identities {self.identities} is not a file.")
        if not self.images.is_dir():
            raise ValueError(f"--images {self.images} is not a folder.")
        if self.same < 1 or self.different < 1:
            raise ValueError("--same and --different must both be at least 1.")


def _make_pairs(args: argparse.Namespace) -> None:
    from training.pairs import make_pairs, read_identity_file, split_by_identity, write_pairs_csv

    config = MakePairsConfig(
        identities=args.identities,
        images=args.images,
        output=args.output,
        same=args.same,
        different=args.different,
        split=args.split,
        split_seed=args.split_seed,
        seed=args.seed,
    )
    labels = read_identity_file(config.identities, images_dir=config.images)
    if config.split != "all":
        tuning, held_out = split_by_identity(labels, seed=config.split_seed)
        labels = tuning if config.split == "tuning" else held_out
    pairs = make_pairs(
        labels, same_pairs=config.same, different_pairs=config.different, seed=config.seed
    )
    write_pairs_csv(pairs, config.output, images_root=config.images)
    logger.info("Wrote %d pairs to %s", len(pairs), config.output)


def _train(args: argparse.Namespace) -> None:
    from training.model import TowerConfig
    from training.train import TrainConfig, summarize_history, train

    tower = TowerConfig(
        backbone=args.backbone,
        input_size=(args.input_size, args.input_size),
        embedding_size=args.embedding_size,
        weights=args.weights,
        dropout_rate=args.dropout_rate,
        l2_normalize=args.l2_normalize,
    )
    name = args.name if args.name is not None else f"siamese_{args.backbone}"
    config = TrainConfig(
        data_dir=args.data,
        run_dir=args.run_dir if args.run_dir is not None else Path("runs") / name,
        tower=tower,
        margin=args.margin,
        batch_size=args.batch_size,
        epochs=args.epochs,
        freeze_epochs=args.freeze_epochs,
        head_learning_rate=args.head_learning_rate,
        learning_rate=args.learning_rate,
        unfreeze_layers=args.unfreeze_layers,
        weight_decay=args.weight_decay,
        pairs_per_epoch=args.pairs_per_epoch,
        hard_negative_fraction=args.hard_negatives,
        hard_negative_pool=args.hard_negative_pool,
        validation_pairs=args.validation_pairs,
        patience=args.patience,
        augment=args.augment,
        flip_augmentation=args.flip_augmentation,
        precision=args.precision,
        seed=args.seed,
        resume=args.resume,
        overwrite=args.overwrite,
        export=args.export,
        models_root=args.models_root,
        model_name=name,
        model_version=args.version,
        verbose=0 if args.quiet else 1,
    )
    if not (config.data_dir / "manifest.json").is_file():
        raise ValueError(
            f"--data {config.data_dir} holds no manifest.json; run `python -m training prepare`."
        )
    result = train(config)
    logger.info("Run %s:\n%s", result.run_dir, summarize_history(result.state.history))
    if result.export_dir is not None:
        logger.info(
            "Exported to %s; serve it with FACEVERIFY_MODEL_DIR=%s", *(result.export_dir,) * 2
        )


def _export(args: argparse.Namespace) -> None:
    from training.train import finalize_run

    if args.version < 1:
        raise ValueError(f"--version must be a positive integer, got {args.version}.")
    destination = finalize_run(
        args.run,
        models_root=args.models_root,
        name=args.name,
        version=args.version,
        overwrite=args.overwrite,
    )
    logger.info("Exported to %s; serve it with FACEVERIFY_MODEL_DIR=%s", destination, destination)


def _add_train_parsers(commands: Any) -> None:
    from training.backbones import BACKBONES

    train = commands.add_parser(
        "train",
        help="train a Siamese embedding tower on prepared chips, then calibrate and export it",
        description="Trains one shared tower in a Siamese network with the contrastive loss on "
        "online-sampled balanced pairs of the prepared train split, keeps the weights that "
        "validate best (the starting weights included), then calibrates the threshold on the "
        "validation split, evaluates on the test split and exports models/<name>/<version>/. "
        "Mixed precision is switched on automatically on a GPU, and several GPUs are used with "
        "MirroredStrategy.",
    )
    train.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    train.add_argument("--run-dir", type=Path, default=None, help="default runs/<name>")
    train.add_argument("--name", default=None, help="model name (default siamese_<backbone>)")
    train.add_argument("--models-root", type=Path, default=Path("models"))
    train.add_argument("--version", type=int, default=1, help="the exported model's version")
    tower = train.add_argument_group("tower")
    tower.add_argument("--backbone", choices=BACKBONES, default="dlib_resnet")
    tower.add_argument(
        "--weights",
        default=None,
        help="imagenet|none|PATH (dlib_resnet: dlib|none|PATH to a .dat); default: the "
        "backbone's pretrained weights (imagenet needs internet once)",
    )
    tower.add_argument("--embedding-size", type=int, default=128)
    tower.add_argument("--input-size", type=int, default=150, help="the prepared chips' size")
    tower.add_argument("--dropout-rate", type=float, default=0.0)
    tower.add_argument(
        "--l2-normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise embeddings (default: on, off for dlib_resnet)",
    )
    fit = train.add_argument_group("training")
    fit.add_argument("--margin", type=float, default=1.0, help="contrastive loss margin")
    fit.add_argument("--batch-size", type=int, default=32, help="pairs per step, all GPUs")
    fit.add_argument("--epochs", type=int, default=10)
    fit.add_argument("--freeze-epochs", type=int, default=1, help="epochs with a frozen backbone")
    fit.add_argument("--head-learning-rate", type=float, default=1e-3)
    fit.add_argument("--learning-rate", type=float, default=1e-5, help="after unfreezing")
    fit.add_argument(
        "--unfreeze-layers", type=int, default=0, help="top backbone layers to unfreeze (0: all)"
    )
    fit.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's, 0 for Adam")
    fit.add_argument(
        "--pairs-per-epoch", type=int, default=None, help="default: one per training chip"
    )
    fit.add_argument(
        "--hard-negatives",
        type=float,
        default=0.0,
        help="share of different-person pairs mined as the nearest other identity",
    )
    fit.add_argument("--hard-negative-pool", type=int, default=2048)
    fit.add_argument("--validation-pairs", type=int, default=2000)
    fit.add_argument("--patience", type=int, default=3, help="epochs without improvement")
    fit.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    fit.add_argument(
        "--flip-augmentation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="embed chip and mirror and average (validation, calibration and serving)",
    )
    fit.add_argument("--precision", choices=("auto", "mixed_float16", "float32"), default="auto")
    fit.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    train.add_argument(
        "--overwrite", action="store_true", help="replace an existing run and export"
    )
    train.add_argument(
        "--export", action=argparse.BooleanOptionalAction, default=True, help="export at the end"
    )
    train.add_argument("--quiet", action="store_true", help="no per-step progress bar")
    train.set_defaults(handler=_train)

    export = commands.add_parser(
        "export",
        help="calibrate, evaluate and export the best weights of a training run",
        description="Rebuilds a run's best tower in float32, calibrates it on the validation "
        "split, evaluates it on the test split and exports models/<name>/<version>/.",
    )
    export.add_argument("--run", type=Path, required=True, help="the run folder (runs/<name>)")
    export.add_argument("--models-root", type=Path, default=Path("models"))
    export.add_argument("--name", default=None, help="default: the run's model name")
    export.add_argument("--version", type=int, default=1)
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(handler=_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Offline model building and training."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    import_dlib = commands.add_parser(
        "import-dlib",
        help="convert dlib's ResNet face descriptor into models/dlib_resnet_v1/<version>/",
        description="Converts dlib_face_recognition_resnet_model_v1.dat (from the "
        "face-recognition-models package) into a SavedModel plus metadata.json. Does nothing when "
        "an up-to-date export is already there.",
    )
    import_dlib.add_argument("--models-root", type=Path, default=Path("models"))
    import_dlib.add_argument(
        "--source", type=Path, default=None, help="a .dat file (default: the packaged one)"
    )
    import_dlib.add_argument("--version", type=int, default=1)
    import_dlib.add_argument("--force", action="store_true", help="rebuild even if up to date")
    import_dlib.set_defaults(handler=_import_dlib)

    derive = commands.add_parser(
        "derive-template",
        help="derive the 5-point template that makes MTCNN chips match dlib's (needs dlib)",
        description="Derives the alignment template on half of the identities and checks it on "
        "the other half; prints JSON. Copy the template into training/import_dlib.py.",
    )
    derive.add_argument("--images", type=Path, required=True, help="folder of photos")
    derive.add_argument("--identities", type=Path, required=True, help="identity_CelebA.txt")
    derive.add_argument("--model", type=Path, default=Path("models/dlib_resnet_v1/1"))
    derive.add_argument("--faces", type=int, default=300, help="faces per half")
    derive.add_argument("--seed", type=int, default=0)
    derive.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    derive.set_defaults(handler=_derive_template)

    for name, handler, text in (
        ("evaluate", _evaluate, "verification figures of a model on a pairs file"),
        ("calibrate", _calibrate, "calibrate a model's threshold on a pairs file"),
    ):
        command = commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. Pairs: LFW's pairs.txt (with or without its "
            "header) or a CSV with the header path_a,path_b,same, with the images' folder; or a "
            "split of a prepared dataset (--data), whose chips are already aligned.",
        )
        command.add_argument("--model", type=Path, required=True, help="models/<name>/<version>")
        command.add_argument("--pairs", type=Path, default=None, help="pairs.txt or pairs CSV")
        command.add_argument("--images", type=Path, default=None, help="the images' root folder")
        command.add_argument("--batch-size", type=int, default=32)
        command.add_argument(
            "--data",
            type=Path,
            default=None,
            help="instead of --pairs/--images: a prepared dataset (python -m training prepare)",
        )
        command.add_argument(
            "--split",
            choices=SPLITS,
            default=None,
            help="with --data: the split (default: "
            f"{'test' if name == 'evaluate' else 'validation'})",
        )
        command.add_argument(
            "--split-pairs", type=int, default=6000, help="with --data: balanced pairs to draw"
        )
        command.add_argument("--seed", type=int, default=0, help="with --data: the pairs' seed")
        if name == "evaluate":
            command.add_argument(
                "--output", type=Path, default=None, help="report folder (runs/evaluation)"
            )
        command.set_defaults(handler=handler)

    pairs = commands.add_parser(
        "make-pairs",
        help="write a seeded CSV of same/different pairs from an identity file",
        description="Builds balanced same/different pairs from CelebA's identity_CelebA.txt for "
        "the images present in --images. --split tuning|held-out takes one half of the identities "
        "(split seeded by --split-seed), so calibration can use identities the tuning never saw.",
    )
    pairs.add_argument("--identities", type=Path, required=True, help="identity_CelebA.txt")
    pairs.add_argument("--images", type=Path, required=True, help="folder of the images")
    pairs.add_argument("--output", type=Path, required=True, help="the CSV to write")
    pairs.add_argument("--same", type=int, default=1500)
    pairs.add_argument("--different", type=int, default=1500)
    pairs.add_argument("--split", choices=("all", "tuning", "held-out"), default="all")
    pairs.add_argument("--split-seed", type=int, default=0)
    pairs.add_argument("--seed", type=int, default=0)
    pairs.set_defaults(handler=_make_pairs)

    from training.data import download, prepare

    download.add_parser(commands)
    prepare.add_parser(commands)
    _add_train_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # TensorFlow's C++ start-up chatter and absl's tracing notes drown the command's own log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
