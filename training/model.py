"""The embedding tower, the Siamese network around it and the contrastive loss.

Every tower has the same shape, so training treats them alike::

    images (RGB, 0..255) -> [the backbone's own preprocessing] -> backbone (a nested Model named
    "backbone") -> head (dropout, projection to the embedding size, optional L2 normalisation)
    -> float32 embedding

Backbones: ``dlib_resnet`` (the default model's network, initialised from dlib's weights, whose own
fully connected layer is the projection when the embedding size is its 128), ``efficientnet_b0`` ..
``efficientnet_b7`` and ``densenet121`` from ``keras.applications`` (ImageNet weights, none, or a
weights file). The Siamese model applies one tower, with shared weights, to both images of a pair
and outputs their Euclidean distance; ``ContrastiveLoss`` trains it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
from keras import layers, ops

from training.backbones import BACKBONES, DENSENET, DLIB_BACKBONE, EFFICIENTNETS
from training.layers import EuclideanDistance

logger = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"
PROJECTION_LAYER = "head_projection"
OUTPUT_LAYER = "output_embedding"
# DenseNet expects Torch-style input: x / 255, then ImageNet's mean and standard deviation.
_IMAGENET_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
_IMAGENET_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)

Phase = Literal["head", "full"]


@dataclass(frozen=True)
class TowerConfig:
    """What defines a tower; saved with every training run so the tower can be rebuilt.

    ``weights``: None for the backbone's pretrained default (dlib's for ``dlib_resnet``, ImageNet
    for the others), ``"none"`` for random initialisation, or a path (a dlib ``.dat`` file for
    ``dlib_resnet``, a Keras weights file of the backbone without its top for the others).
    ``l2_normalize``: None means on for the ImageNet backbones and off for ``dlib_resnet``, whose
    descriptors are not normalised (keeping them so keeps its distances on dlib's scale).
    """

    backbone: str = DLIB_BACKBONE
    input_size: tuple[int, int] = (150, 150)
    embedding_size: int = 128
    weights: str | None = None
    dropout_rate: float = 0.0
    l2_normalize: bool | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}."
            )
        if self.embedding_size < 2:
            raise ValueError(f"The embedding size must be at least 2, got {self.embedding_size}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"The dropout rate must be in [0, 1), got {self.dropout_rate}.")
        rows, cols = self.input_size
        if min(rows, cols) < 32:
            raise ValueError(f"The input size must be at least 32x32, got {rows}x{cols}.")
        if self.backbone == DLIB_BACKBONE and rows != cols:
            raise ValueError(f"dlib_resnet takes square chips, got {rows}x{cols}.")
        if (
            self.weights not in (None, "none", "imagenet", "dlib")
            and not Path(self.weights).is_file()
        ):
            raise ValueError(
                f"--weights {self.weights!r} is neither a known choice nor a file; use "
                "'imagenet' or 'dlib' (the backbone's pretrained weights), 'none', or a path."
            )
        if self.weights == "imagenet" and self.backbone == DLIB_BACKBONE:
            raise ValueError("dlib_resnet has no ImageNet weights; use 'dlib', 'none' or a path.")
        if self.weights == "dlib" and self.backbone != DLIB_BACKBONE:
            raise ValueError(f"'dlib' weights are for dlib_resnet, not {self.backbone}.")

    @property
    def normalizes(self) -> bool:
        if self.l2_normalize is not None:
            return self.l2_normalize
        return self.backbone != DLIB_BACKBONE

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "input_size": list(self.input_size),
            "embedding_size": self.embedding_size,
            "weights": self.weights,
            "dropout_rate": self.dropout_rate,
            "l2_normalize": self.l2_normalize,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TowerConfig:
        rows, cols = values["input_size"]
        return cls(
            backbone=values["backbone"],
            input_size=(int(rows), int(cols)),
            embedding_size=int(values["embedding_size"]),
            weights=values["weights"],
            dropout_rate=float(values["dropout_rate"]),
            l2_normalize=values["l2_normalize"],
        )


def build_tower(
    config: TowerConfig, *, pretrained: bool = True, name: str = "tower"
) -> keras.Model:
    """Builds the embedding tower: RGB chips in 0..255 -> float32 embeddings.

    ``pretrained=False`` skips loading any weights (used when trained weights are loaded next).
    """
    rows, cols = config.input_size
    inputs = keras.Input(shape=(rows, cols, 3), name="images")
    if config.backbone == DLIB_BACKBONE:
        backbone, projection = _dlib_backbone(config, pretrained=pretrained)
        features = backbone(inputs)
    else:
        backbone = _applications_backbone(config, pretrained=pretrained)
        projection = None
        x = inputs
        if config.backbone == DENSENET:
            x = layers.Normalization(
                mean=list(_IMAGENET_MEAN),
                variance=[std**2 for std in _IMAGENET_STD],
                name="head_preprocess",
            )(x)
        # Batch normalisation stays in inference mode even when the backbone is unfrozen, as
        # Keras' transfer-learning guide advises: small fine-tuning batches would wreck its
        # statistics.
        features = backbone(x, training=False)
    x = features
    if config.dropout_rate > 0:
        x = layers.Dropout(config.dropout_rate, name="head_dropout")(x)
    if projection is None:
        projection = layers.Dense(config.embedding_size, use_bias=False, name=PROJECTION_LAYER)
    x = projection(x)
    if config.normalizes:
        x = layers.UnitNormalization(axis=-1, name="head_l2_normalize")(x)
    # Embeddings leave the tower in float32 under mixed precision, so distances are exact enough.
    outputs = layers.Activation("linear", dtype="float32", name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name=name)


def _dlib_backbone(config: TowerConfig, *, pretrained: bool) -> tuple[keras.Model, Any]:
    """dlib's network up to its global pooling, and its own projection when the size is 128."""
    from training import dlib_format, dlib_resnet

    rows, _ = config.input_size
    if pretrained and config.weights != "none":
        if config.weights in (None, "dlib"):
            from training.import_dlib import SOURCE_FILE, packaged_model_file

            source = packaged_model_file(SOURCE_FILE)
        else:
            source = Path(str(config.weights))
        network = dlib_format.read_network(source)
        if network.input.rows != rows:
            raise ValueError(
                f"{source.name} takes {network.input.rows}x{network.input.rows} chips, but the "
                f"prepared chips are {rows}x{rows}; prepare the data with this model's template."
            )
        full = dlib_resnet.import_dlib_network(network)
    else:
        full = dlib_resnet.build_dlib_resnet(input_size=rows)
    backbone = keras.Model(full.input, full.get_layer("global_pool").output, name=BACKBONE_LAYER)
    dlib_projection = full.get_layer("embedding")
    if config.embedding_size == dlib_projection.units:
        return backbone, dlib_projection
    logger.info(
        "Embedding size %d differs from dlib's %d: the projection starts from random weights",
        config.embedding_size,
        dlib_projection.units,
    )
    return backbone, None


def _applications_backbone(config: TowerConfig, *, pretrained: bool) -> keras.Model:
    rows, cols = config.input_size
    constructor: Callable[..., keras.Model]
    if config.backbone == DENSENET:
        constructor = keras.applications.DenseNet121
    else:
        constructor = getattr(keras.applications, EFFICIENTNETS[config.backbone])
    weights: str | None
    if not pretrained or config.weights == "none":
        weights = None
    elif config.weights in (None, "imagenet"):
        weights = "imagenet"
    else:
        weights = str(config.weights)
    try:
        backbone = constructor(
            include_top=False, weights=weights, input_shape=(rows, cols, 3), pooling="avg"
        )
    except Exception as error:
        # keras.utils.get_file raises a bare Exception when the download fails; only the weights
        # step can fail here, so the message can say what to do.
        if weights != "imagenet":
            raise
        raise ValueError(
            f"The ImageNet weights of {config.backbone} could not be downloaded ({error}); they "
            "need internet once (Keras caches them in ~/.keras/models). Pass --weights none, or "
            "--weights PATH to a copy of the file."
        ) from error
    backbone.name = BACKBONE_LAYER
    return backbone


def set_phase(tower: keras.Model, phase: Phase, *, backbone_layers: int = 0) -> int:
    """Freezes the backbone for the ``"head"`` phase or unfreezes it for ``"full"``; returns how
    many weights are trainable.

    ``backbone_layers`` > 0 unfreezes only that many of the backbone's top layers that have
    weights; 0 unfreezes all of them. Batch normalisation layers stay frozen either way.
    """
    backbone = tower.get_layer(BACKBONE_LAYER)
    if phase == "head":
        backbone.trainable = False
    elif phase == "full":
        backbone.trainable = True
        weighted = [layer for layer in backbone.layers if layer.weights]
        chosen = weighted if backbone_layers <= 0 else weighted[-backbone_layers:]
        chosen_ids = {id(layer) for layer in chosen}
        for layer in weighted:
            layer.trainable = id(layer) in chosen_ids and not isinstance(
                layer, layers.BatchNormalization
            )
    else:
        raise ValueError(f"Unknown phase {phase!r}; use 'head' or 'full'.")
    return sum(int(ops.size(weight)) for weight in tower.trainable_weights)


def build_siamese(tower: keras.Model) -> keras.Model:
    """Two inputs through one shared tower, out comes their Euclidean distance [batch, 1]."""
    shape = tuple(tower.input_shape[1:])
    first = keras.Input(shape=shape, name="image_a")
    second = keras.Input(shape=shape, name="image_b")
    distance = EuclideanDistance(name="distance")([tower(first), tower(second)])
    return keras.Model([first, second], distance, name="siamese")


@keras.saving.register_keras_serializable(package="faceverify")
class ContrastiveLoss(keras.losses.Loss):  # type: ignore[misc]
    """Contrastive loss on the Euclidean distance d of a pair (Hadsell, Chopra and LeCun, 2006).

    With y = 1 for the same person and y = 0 for different people, and margin m:

        loss = y * d^2 + (1 - y) * max(m - d, 0)^2

    averaged over the batch: same-person pairs are pulled together, different-person pairs pushed
    apart until they are at least m apart, after which they cost nothing.
    """

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", **kwargs: Any) -> None:
        if margin <= 0:
            raise ValueError(f"The margin must be positive, got {margin}.")
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        distance = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
        same = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        apart = ops.maximum(self.margin - distance, 0.0)
        return same * ops.square(distance) + (1.0 - same) * ops.square(apart)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}
