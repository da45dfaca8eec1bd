"""The dlib ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``) as a Keras tower.

The architecture, from dlib's ``dnn_face_recognition_ex.cpp``, input 150 x 150 RGB:

    (x - mean) / 256 -> conv 7x7/2 (32, no padding) -> affine -> relu -> max pool 3x3/2
    -> 3 x res(32) -> res_down(64) + 3 x res(64) -> res_down(128) + 2 x res(128)
    -> res_down(256) + 2 x res(256) -> res_down(256)
    -> global average pool -> fully connected 256 -> 128 (no bias)

A block is conv 3x3 (stride s) -> affine -> relu -> conv 3x3 -> affine, added to the shortcut, then
relu. Stride-1 convolutions pad by one; stride-2 ones do not pad. A down block takes its shortcut
through a 2x2 stride-2 average pool, and the addition zero-extends the smaller tensor (see
``ZeroExtendAdd``). The output is the raw 128-d descriptor (not normalised; norms are near 1.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from training import dlib_format
from training.layers import Affine, ChannelNormalization, ZeroExtendAdd

MODEL_NAME = "dlib_resnet_v1"
INPUT_SIZE = 150
EMBEDDING_SIZE = 128
INPUT_MEAN = (122.782, 117.001, 104.298)
INPUT_SCALE = 256.0
# (filters, blocks, whether the first block downsamples), from the input outwards.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)


@dataclass(frozen=True)
class _Step:
    """One dlib layer in file order and the Keras layer that plays its part (if it has weights)."""

    kind: type[dlib_format.Layer]
    layer: keras.layers.Layer | None = None
    stride: int = 1
    padding: int = 0
    window: int = 0


def build_dlib_resnet(
    *,
    input_size: int = INPUT_SIZE,
    embedding_size: int = EMBEDDING_SIZE,
    input_mean: Sequence[float] = INPUT_MEAN,
    name: str = MODEL_NAME,
) -> keras.Model:
    """Builds the tower with fresh weights; its input is RGB chips with values in 0..255."""
    model, _ = _build(
        input_size=input_size, embedding_size=embedding_size, input_mean=input_mean, name=name
    )
    return model


def import_dlib_network(network: dlib_format.DlibNetwork, *, name: str = MODEL_NAME) -> keras.Model:
    """Builds the tower for a parsed dlib network and loads its weights.

    Raises ``DlibFormatError`` when the file's layers are not the face descriptor's architecture.
    """
    if network.input.rows != network.input.cols:
        raise dlib_format.DlibFormatError(
            f"The network's input is {network.input.rows}x{network.input.cols}; "
            "a square input is expected."
        )
    fully_connected = network.layers[-1]
    if not isinstance(fully_connected, dlib_format.FullyConnected):
        raise dlib_format.DlibFormatError("The network does not end in a fully connected layer.")
    model, steps = _build(
        input_size=network.input.rows,
        embedding_size=fully_connected.weights.shape[1],
        input_mean=network.input.mean,
        name=name,
    )
    _check_architecture(network, steps)
    for step, source in zip(steps, network.layers, strict=True):
        _assign(step, source)
    return model


def _build(
    *, input_size: int, embedding_size: int, input_mean: Sequence[float], name: str
) -> tuple[keras.Model, list[_Step]]:
    steps: list[_Step] = []

    def conv(x: Any, filters: int, kernel: int, stride: int, layer_name: str) -> Any:
        # dlib pads stride-1 convolutions by kernel // 2 and stride-2 ones not at all.
        padding = kernel // 2 if stride == 1 else 0
        layer = layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same" if padding else "valid",
            name=layer_name,
        )
        steps.append(_Step(dlib_format.Conv, layer, stride=stride, padding=padding, window=kernel))
        return layer(x)

    def affine(x: Any, layer_name: str) -> Any:
        layer = Affine(name=layer_name)
        steps.append(_Step(dlib_format.Affine, layer))
        return layer(x)

    def relu(x: Any, layer_name: str) -> Any:
        steps.append(_Step(dlib_format.Relu))
        return layers.ReLU(name=layer_name)(x)

    inputs = keras.Input(shape=(input_size, input_size, 3), name="images")
    x = ChannelNormalization(mean=input_mean, scale=INPUT_SCALE, name="normalize")(inputs)
    x = conv(x, 32, 7, 2, "conv1")
    x = affine(x, "conv1_affine")
    x = relu(x, "conv1_relu")
    steps.append(_Step(dlib_format.Pool, stride=2, window=3))
    x = layers.MaxPooling2D(pool_size=3, strides=2, padding="valid", name="conv1_pool")(x)

    for stage_index, (filters, blocks, downsample) in enumerate(STAGES, start=1):
        for block_index in range(1, blocks + 1):
            prefix = f"stage{stage_index}_block{block_index}"
            stride = 2 if downsample and block_index == 1 else 1
            shortcut = x
            y = conv(x, filters, 3, stride, f"{prefix}_conv1")
            y = affine(y, f"{prefix}_affine1")
            y = relu(y, f"{prefix}_relu1")
            y = conv(y, filters, 3, 1, f"{prefix}_conv2")
            y = affine(y, f"{prefix}_affine2")
            if stride == 2:
                steps.append(_Step(dlib_format.Pool, stride=2, window=2))
                shortcut = layers.AveragePooling2D(
                    pool_size=2, strides=2, padding="valid", name=f"{prefix}_shortcut_pool"
                )(shortcut)
            steps.append(_Step(dlib_format.AddPrev))
            x = ZeroExtendAdd(name=f"{prefix}_add")([shortcut, y])
            x = relu(x, f"{prefix}_out")

    steps.append(_Step(dlib_format.Pool))
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    dense = layers.Dense(embedding_size, use_bias=False, name="embedding")
    steps.append(_Step(dlib_format.FullyConnected, dense))
    # The output stays float32 under mixed precision so distances are computed at full precision.
    outputs = layers.Activation("linear", dtype="float32", name="descriptor")(dense(x))
    return keras.Model(inputs, outputs, name=name), steps


def _check_architecture(network: dlib_format.DlibNetwork, steps: Sequence[_Step]) -> None:
    found = [type(layer).__name__ for layer in network.layers]
    expected = [step.kind.__name__ for step in steps]
    if found != expected:
        raise dlib_format.DlibFormatError(
            f"The file holds {len(found)} layers that do not match the {len(expected)} of the dlib "
            "ResNet face descriptor; is it dlib_face_recognition_resnet_model_v1.dat?"
        )
    for index, (step, layer) in enumerate(zip(steps, network.layers, strict=True)):
        actual: tuple[object, ...]
        wanted: tuple[object, ...]
        if isinstance(layer, dlib_format.Conv):
            window = layer.filters.shape[2]
            actual = (layer.stride, layer.padding, window)
            wanted = ((step.stride,) * 2, (step.padding,) * 2, step.window)
        elif isinstance(layer, dlib_format.Pool):
            actual = (layer.window, layer.stride, layer.padding)
            wanted = ((step.window,) * 2, (step.stride,) * 2, (0, 0))
        else:
            continue
        if actual != wanted:
            raise dlib_format.DlibFormatError(
                f"Layer {index} ({type(layer).__name__}) has window/stride/padding {actual}, "
                f"expected {wanted} for the dlib ResNet face descriptor."
            )


def _assign(step: _Step, source: dlib_format.Layer) -> None:
    if step.layer is None:
        return
    if isinstance(source, dlib_format.Conv):
        # dlib stores filters as [out, in, rows, cols]; Keras wants [rows, cols, in, out].
        step.layer.set_weights([np.transpose(source.filters, (2, 3, 1, 0)), source.biases])
    elif isinstance(source, dlib_format.Affine):
        step.layer.set_weights([source.gamma, source.beta])
    elif isinstance(source, dlib_format.FullyConnected):
        if source.bias is not None:
            raise dlib_format.DlibFormatError("The descriptor's fully connected layer has a bias.")
        step.layer.set_weights([source.weights])
