"""Custom Keras layers of the dlib ResNet tower and the Siamese network, in ``keras.ops`` only.

They run on any Keras 3 backend (TensorFlow, JAX, PyTorch), save and load in the ``.keras``
format, and respect mixed precision (they compute in ``self.compute_dtype``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

_PACKAGE = "faceverify"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelNormalization(keras.layers.Layer):  # type: ignore[misc]
    """Maps raw pixel values to the network's input range: y = (x - mean[channel]) / scale.

    The input may be any numeric dtype (uint8 chips are cast first), channels last.
    """

    def __init__(self, mean: Sequence[float], scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean = [float(value) for value in mean]
        self.scale = float(scale)
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}.")

    def call(self, inputs: Any) -> Any:
        values = ops.cast(inputs, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        return (values - mean) / ops.cast(self.scale, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mean": self.mean, "scale": self.scale}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Affine(keras.layers.Layer):  # type: ignore[misc]
    """A per-channel scale and shift, y = gamma * x + beta: dlib's ``affine_`` layer.

    dlib trains with batch normalisation and replaces it with this fixed affine map for inference.
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("Affine needs a known channel count (the last input dimension).")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, inputs: Any) -> Any:
        return inputs * ops.cast(self.gamma, inputs.dtype) + ops.cast(self.beta, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ZeroExtendAdd(keras.layers.Layer):  # type: ignore[misc]
    """Adds two channels-last feature maps the way dlib's ``add_prev_`` does.

    When their rows, columns or channels differ, the smaller one is extended with zeros at the
    bottom, the right and the end of the channels, so the sum has the larger size in each dimension.
    Spatial sizes and channel counts must be known when the model is built.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        first, second = inputs
        target = self._target_shape([tuple(first.shape), tuple(second.shape)])
        return self._extend(first, target) + self._extend(second, target)

    @staticmethod
    def _extend(tensor: Any, target: tuple[int, int, int]) -> Any:
        sizes = tuple(tensor.shape[1:])
        missing = [want - int(have or want) for want, have in zip(target, sizes, strict=True)]
        if not any(missing):
            return tensor
        return ops.pad(tensor, [[0, 0]] + [[0, count] for count in missing])

    @staticmethod
    def _target_shape(shapes: Sequence[tuple[int | None, ...]]) -> tuple[int, int, int]:
        first, second = ([size for size in shape[1:] if size is not None] for shape in shapes)
        if len(first) != 3 or len(second) != 3:
            raise ValueError(
                "ZeroExtendAdd needs two [batch, rows, cols, channels] inputs with known sizes, "
                f"got {shapes[0]} and {shapes[1]}."
            )
        rows, cols, channels = (max(a, b) for a, b in zip(first, second, strict=True))
        return rows, cols, channels

    def compute_output_shape(
        self, input_shape: Sequence[tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        return (input_shape[0][0], *self._target_shape(input_shape))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EuclideanDistance(keras.layers.Layer):  # type: ignore[misc]
    """The Euclidean distance between two batches of embeddings: d = sqrt(max(sum((a - b)^2), eps)).

    It computes in float32 whatever the precision policy, as the service compares embeddings, and
    the floor ``eps`` keeps the gradient finite when two embeddings coincide. Output: [batch, 1].
    """

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs: Sequence[Any]) -> Any:
        first, second = (ops.cast(tensor, "float32") for tensor in inputs)
        squared = ops.sum(ops.square(first - second), axis=-1, keepdims=True)
        return ops.sqrt(ops.maximum(squared, self.epsilon))

    def compute_output_shape(
        self, input_shape: Sequence[tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        return (input_shape[0][0], 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
