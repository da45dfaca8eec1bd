"""Shared fixtures: the converted dlib model, real face chips, and the shared face data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from app.pipeline.metadata import model_version_dir
from training import dlib_format
from training.import_dlib import SOURCE_FILE, file_sha256, is_up_to_date, packaged_model_file

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dlib_model_file() -> Path:
    return packaged_model_file(SOURCE_FILE)


@pytest.fixture(scope="session")
def dlib_network(dlib_model_file: Path) -> dlib_format.DlibNetwork:
    return dlib_format.read_network(dlib_model_file)


@pytest.fixture(scope="session")
def keras_tower(dlib_network: dlib_format.DlibNetwork):
    from training.dlib_resnet import import_dlib_network

    return import_dlib_network(dlib_network)


@pytest.fixture(scope="session")
def default_model_dir(dlib_model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's built default model (``make model``), or a fresh build in a temp dir."""
    built = model_version_dir(REPO_ROOT / "models", "dlib_resnet_v1", 1)
    if is_up_to_date(built, source_sha256=file_sha256(dlib_model_file)):
        return built
    from training.import_dlib import import_dlib

    return import_dlib(models_root=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$FACEVERIFY_TEST_DATA``); tests that need it skip without it."""
    configured = os.environ.get("FACEVERIFY_TEST_DATA")
    root = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    if not (root / "celeba").is_dir():
        pytest.skip(
            f"the labelled face photos are not at {root}; set FACEVERIFY_TEST_DATA to their folder"
        )
    return root


@pytest.fixture(scope="session")
def astronaut() -> npt.NDArray[np.uint8]:
    """A real face photo that ships with scikit-image (Eileen Collins), RGB uint8."""
    from skimage import data

    return np.asarray(data.astronaut(), dtype=np.uint8)


@pytest.fixture(scope="session")
def dlib_tools(dlib_model_file: Path) -> Iterator[dict[str, object]]:
    """dlib's own detector, 5-point predictor and descriptor: the reference for parity."""
    dlib = pytest.importorskip("dlib", reason="dlib-bin (dev group) is needed for parity checks")
    yield {
        "detector": dlib.get_frontal_face_detector(),
        "predictor": dlib.shape_predictor(
            str(packaged_model_file("shape_predictor_5_face_landmarks.dat"))
        ),
        "descriptor": dlib.face_recognition_model_v1(str(dlib_model_file)),
        "get_face_chip": dlib.get_face_chip,
    }
