"""The towers, the Siamese wrapper and the contrastive loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.layers import EuclideanDistance
from training.model import (
    ContrastiveLoss,
    TowerConfig,
    build_siamese,
    build_tower,
    set_phase,
)


@pytest.mark.parametrize(
    ("margin", "same", "distances", "expected"),
    [
        # same: d^2; different: max(m - d, 0)^2; then the mean.
        (1.0, [1, 0, 0, 1], [0.5, 0.5, 1.5, 0.0], (0.25 + 0.25 + 0.0 + 0.0) / 4),
        (2.0, [0, 0], [0.5, 3.0], (1.5**2 + 0.0) / 2),
        (0.5, [1], [2.0], 4.0),
        (1.0, [0], [0.0], 1.0),
    ],
)
def test_contrastive_loss_matches_hand_worked_values(
    margin: float, same: list[int], distances: list[float], expected: float
) -> None:
    loss = ContrastiveLoss(margin=margin)
    value = loss(np.array(same, np.float32), np.array(distances, np.float32)[:, None])
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_round_trips_its_config() -> None:
    loss = keras.losses.deserialize(keras.losses.serialize(ContrastiveLoss(margin=0.7)))
    assert isinstance(loss, ContrastiveLoss)
    assert loss.margin == 0.7
    with pytest.raises(ValueError, match="margin must be positive"):
        ContrastiveLoss(margin=0)


def test_euclidean_distance_is_exact_and_keeps_gradients_finite() -> None:
    import tensorflow as tf

    layer = EuclideanDistance()
    first = tf.constant([[0.0, 0.0], [1.0, 1.0]])
    second = tf.Variable([[3.0, 4.0], [1.0, 1.0]])
    with tf.GradientTape() as tape:
        distances = layer([first, second])
    np.testing.assert_allclose(distances.numpy()[:, 0], [5.0, 1e-6], rtol=1e-5)
    gradient = tape.gradient(distances, second).numpy()
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient[0], [0.6, 0.8], rtol=1e-5)


def test_dlib_tower_is_the_default_model(keras_tower: keras.Model) -> None:
    tower = build_tower(TowerConfig())
    chips = np.random.default_rng(0).uniform(0, 255, (2, 150, 150, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        tower.predict(chips, verbose=0), keras_tower.predict(chips, verbose=0)
    )
    # The head is dlib's own 256 -> 128 projection; unfreezing opens up the backbone.
    assert set_phase(tower, "head") == 256 * 128
    assert set_phase(tower, "full") == keras_tower.count_params()
    top = set_phase(tower, "full", backbone_layers=2)
    assert 256 * 128 < top < keras_tower.count_params()


def test_siamese_outputs_the_distance_of_one_shared_tower() -> None:
    tower = build_tower(
        TowerConfig(backbone="efficientnet_b0", weights="none", input_size=(64, 64))
    )
    siamese = build_siamese(tower)
    rng = np.random.default_rng(1)
    first, second = (rng.uniform(0, 255, (3, 64, 64, 3)).astype(np.float32) for _ in range(2))
    distances = np.asarray(siamese([first, second]))[:, 0]
    expected = np.linalg.norm(np.asarray(tower(first)) - np.asarray(tower(second)), axis=1)
    np.testing.assert_allclose(distances, expected, rtol=1e-5, atol=1e-6)
    # One tower, shared: the Siamese model has no weights of its own.
    assert siamese.count_params() == tower.count_params()


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "densenet121"])
def test_imagenet_backbones_build_with_a_normalised_projection(backbone: str) -> None:
    config = TowerConfig(
        backbone=backbone, weights="none", input_size=(64, 64), embedding_size=32, dropout_rate=0.2
    )
    tower = build_tower(config)
    chips = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    embeddings = tower.predict(chips, verbose=0)
    assert embeddings.shape == (2, 32)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    head = set_phase(tower, "head")
    assert head == tower.get_layer("head_projection").count_params()
    assert set_phase(tower, "full") > head


def test_unreachable_imagenet_weights_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from keras.src.utils import file_utils

    def offline(*args: object, **kwargs: object) -> str:
        raise Exception("URL fetch failure: no route to host")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ValueError, match="need internet once.*--weights none"):
        build_tower(
            TowerConfig(backbone="efficientnet_b0", weights="imagenet", input_size=(64, 64))
        )


def test_mixed_precision_tower_still_returns_float32() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tower = build_tower(
            TowerConfig(backbone="efficientnet_b0", weights="none", input_size=(64, 64))
        )
        assert tower.get_layer("head_projection").compute_dtype == "float16"
        output = tower(np.zeros((1, 64, 64, 3), np.float32))
        assert output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backbone": "resnet50"}, "Unknown backbone"),
        ({"embedding_size": 1}, "at least 2"),
        ({"dropout_rate": 1.0}, "dropout rate"),
        ({"input_size": (16, 16)}, "at least 32x32"),
        ({"input_size": (150, 120)}, "square"),
        ({"weights": "imagenet"}, "no ImageNet weights"),
        ({"backbone": "densenet121", "weights": "dlib"}, "are for dlib_resnet"),
        ({"weights": "/no/such/file.h5"}, "neither a known choice nor a file"),
    ],
)
def test_bad_tower_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TowerConfig(**settings)  # type: ignore[arg-type]


def test_mixed_precision_compiles_with_loss_scaling() -> None:
    """The GPU's default policy: Keras wraps the optimizer in dynamic loss scaling, and the
    distances and the loss stay float32. (A float16 training step on the CPU is emulated and too
    slow for the suite; benchmarks/training_throughput.py runs them on a GPU.)"""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tower = build_tower(TowerConfig(weights="none"))
        siamese = build_siamese(tower)
        siamese.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ContrastiveLoss(margin=1.0))
        assert isinstance(siamese.optimizer, keras.optimizers.LossScaleOptimizer)
        assert tower.get_layer("backbone").compute_dtype == "float16"
        chips = np.random.default_rng(0).uniform(0, 255, (2, 150, 150, 3)).astype(np.float32)
        distances = siamese([chips, chips[::-1]])
        assert distances.dtype == "float32"
        assert np.all(np.isfinite(np.asarray(distances)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
