"""``python -m training <command>``: thin argument parsing; the work lives in the library."""

from __future__ import annotations

import argparse
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
