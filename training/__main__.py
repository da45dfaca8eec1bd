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

logger = logging.getLogger("training")


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


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_model

    config = PairsInputConfig(
        model=args.model, pairs=args.pairs, images=args.images, batch_size=args.batch_size
    )
    output = args.output if args.output is not None else Path("runs") / "evaluation"
    result = evaluate_model(
        model_dir=config.model,
        pairs_file=config.pairs,
        images_root=config.images,
        output_dir=output,
        batch_size=config.batch_size,
    )
    sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")


def _calibrate(args: argparse.Namespace) -> None:
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
            "header) or a CSV with the header path_a,path_b,same.",
        )
        command.add_argument("--model", type=Path, required=True, help="models/<name>/<version>")
        command.add_argument("--pairs", type=Path, required=True, help="pairs.txt or pairs CSV")
        command.add_argument("--images", type=Path, required=True, help="the images' root folder")
        command.add_argument("--batch-size", type=int, default=32)
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
