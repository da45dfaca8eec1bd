"""The Keras tower: architecture, custom layers, and parity with dlib's own descriptor."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from app.pipeline.embed import Embedder
from tests.helpers import dlib_chips
from training import dlib_format
from training.dlib_resnet import build_dlib_resnet, import_dlib_network
from training.layers import Affine, ChannelNormalization, ZeroExtendAdd

REPO_ROOT = Path(__file__).resolve().parents[2]
PARITY_TOLERANCE = 1e-4


def test_architecture_matches_dlibs(keras_tower: keras.Model) -> None:
    kinds = [type(layer).__name__ for layer in keras_tower.layers]
    assert kinds.count("Conv2D") == 29
    assert kinds.count("Affine") == 29
    assert kinds.count("ZeroExtendAdd") == 14
    assert keras_tower.count_params() == 5_614_592
    assert keras_tower.input_shape == (None, 150, 150, 3)
    assert keras_tower.output_shape == (None, 128)
    # The last down block adds a 1x1 block output to a 2x2 pooled shortcut: zero extension.
    last_add = keras_tower.get_layer("stage5_block1_add")
    assert tuple(last_add.output.shape) == (None, 2, 2, 256)


def test_zero_extend_add_pads_bottom_right_and_channels() -> None:
    big = np.arange(2 * 3 * 3 * 2, dtype="float32").reshape(2, 3, 3, 2)
    small = np.ones((2, 2, 2, 4), dtype="float32")
    result = keras.ops.convert_to_numpy(ZeroExtendAdd()([big, small]))
    expected = np.zeros((2, 3, 3, 4), dtype="float32")
    expected[:, :, :, :2] += big
    expected[:, :2, :2, :] += small
    np.testing.assert_array_equal(result, expected)


def test_affine_and_normalization_formulas() -> None:
    values = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    normalize = ChannelNormalization(mean=(10.0, 20.0, 30.0), scale=256.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalize(values.astype("uint8"))),
        (values.astype("uint8").astype("float32") - [10.0, 20.0, 30.0]) / 256.0,
        rtol=1e-6,
    )
    affine = Affine()
    affine.build((None, 4, 4, 3))
    affine.set_weights(
        [np.array([1.0, 2.0, -1.0], "float32"), np.array([0.5, 0.0, 1.0], "float32")]
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(affine(values)),
        values * [1.0, 2.0, -1.0] + [0.5, 0.0, 1.0],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="scale must be positive"):
        ChannelNormalization(mean=(0.0, 0.0, 0.0), scale=0.0)


def test_keras_file_round_trip(keras_tower: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "tower.keras"
    keras_tower.save(path)
    reloaded = keras.saving.load_model(path)
    chips = np.random.default_rng(2).uniform(0, 255, (3, 150, 150, 3)).astype("float32")
    np.testing.assert_allclose(
        reloaded.predict(chips, verbose=0), keras_tower.predict(chips, verbose=0), atol=1e-6
    )


def test_mixed_precision_keeps_float32_embeddings() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        tower = build_dlib_resnet()
    finally:
        keras.config.set_dtype_policy(previous)
    assert tower.get_layer("conv1").compute_dtype == "float16"
    assert tower.get_layer("conv1_affine").compute_dtype == "float16"
    chips = np.full((1, 150, 150, 3), 128, dtype="float32")
    assert tower.predict(chips, verbose=0).dtype == np.float32


def test_rejects_a_network_of_another_architecture(
    dlib_network: dlib_format.DlibNetwork,
) -> None:
    shallower = dataclasses.replace(
        dlib_network, layers=dlib_network.layers[:4] + dlib_network.layers[11:]
    )
    with pytest.raises(dlib_format.DlibFormatError, match="do not match"):
        import_dlib_network(shallower)
    first = dlib_network.layers[0]
    assert isinstance(first, dlib_format.Conv)
    restrided = dataclasses.replace(
        dlib_network,
        layers=(dataclasses.replace(first, stride=(1, 1)), *dlib_network.layers[1:]),
    )
    with pytest.raises(dlib_format.DlibFormatError, match="window/stride/padding"):
        import_dlib_network(restrided)


def _assert_parity(chips: np.ndarray, dlib_tools: dict[str, object], model_dir: Path) -> float:
    descriptor = dlib_tools["descriptor"]
    reference = np.array(
        [np.asarray(descriptor.compute_face_descriptor(chip)) for chip in chips]  # type: ignore[attr-defined]
    )
    ours = Embedder(model_dir).embed(chips)
    difference = float(np.abs(ours - reference).max())
    assert difference < PARITY_TOLERANCE
    return difference


def test_parity_with_dlib_on_a_packaged_photo(
    astronaut: np.ndarray, dlib_tools: dict[str, object], default_model_dir: Path
) -> None:
    chips = np.stack(dlib_chips(dlib_tools, astronaut))
    assert len(chips) >= 1
    _assert_parity(chips, dlib_tools, default_model_dir)


@pytest.mark.data
def test_parity_with_dlib_on_real_photos(
    shared_data: Path, dlib_tools: dict[str, object], default_model_dir: Path
) -> None:
    from PIL import Image

    photos = sorted((shared_data / "celeba" / "img_celeba_wild").glob("*.jpg"))[:12]
    chips: list[np.ndarray] = []
    for photo in photos:
        with Image.open(photo) as image:
            rgb = np.asarray(image.convert("RGB"))
        chips.extend(dlib_chips(dlib_tools, rgb))
    assert len(chips) >= 8, "dlib found too few faces to check parity"
    _assert_parity(np.stack(chips), dlib_tools, default_model_dir)


@pytest.mark.slow
def test_runs_on_the_jax_backend(keras_tower: keras.Model) -> None:
    pytest.importorskip("jax", reason="jax (dev group) runs the backend-neutrality check")
    chips = np.random.default_rng(3).uniform(0, 255, (2, 150, 150, 3)).astype("float32")
    script = (
        "import json, sys, numpy as np, keras\n"
        "assert keras.backend.backend() == 'jax'\n"
        "from training.dlib_format import read_network\n"
        "from training.dlib_resnet import import_dlib_network\n"
        "from training.import_dlib import SOURCE_FILE, packaged_model_file\n"
        "model = import_dlib_network(read_network(packaged_model_file(SOURCE_FILE)))\n"
        "chips = np.asarray(json.load(sys.stdin), dtype='float32')\n"
        "print(json.dumps(model.predict(chips, verbose=0).tolist()))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(chips.tolist()),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    on_jax = np.asarray(json.loads(completed.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(on_jax, keras_tower.predict(chips, verbose=0), atol=1e-5)
