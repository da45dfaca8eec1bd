"""The reader of dlib's serialization, on the real file and on damaged or foreign ones."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training import dlib_format
from training.import_dlib import packaged_model_file


def test_reads_the_face_descriptor(dlib_network: dlib_format.DlibNetwork) -> None:
    kinds = Counter(type(layer).__name__ for layer in dlib_network.layers)
    assert kinds == {
        "Conv": 29,
        "Affine": 29,
        "Relu": 29,
        "AddPrev": 14,
        "Pool": 6,
        "FullyConnected": 1,
    }
    parameters = 0
    for layer in dlib_network.layers:
        if isinstance(layer, dlib_format.Conv):
            parameters += layer.filters.size + layer.biases.size
        elif isinstance(layer, dlib_format.Affine):
            parameters += layer.gamma.size + layer.beta.size
        elif isinstance(layer, dlib_format.FullyConnected):
            parameters += layer.weights.size
    assert parameters == 5_614_592
    assert dlib_network.input.mean == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert (dlib_network.input.rows, dlib_network.input.cols) == (150, 150)
    assert dlib_network.loss == "loss_metric_2"
    assert dlib_network.loss_margin == pytest.approx(0.04)
    assert dlib_network.loss_distance_threshold == pytest.approx(0.6)
    first = dlib_network.layers[0]
    assert isinstance(first, dlib_format.Conv)
    assert first.filters.shape == (32, 3, 7, 7)
    assert (first.stride, first.padding) == ((2, 2), (0, 0))
    last = dlib_network.layers[-1]
    assert isinstance(last, dlib_format.FullyConnected)
    assert last.weights.shape == (256, 128) and last.bias is None
    assert len(dlib_network.sha256) == 64


def test_primitives_follow_dlibs_encoding() -> None:
    # 0.04 as dlib writes it: mantissa 0xa3d70a (3 bytes), exponent -28 (0x81 = negative, 1 byte).
    stream = dlib_format._Stream(
        b"\x03\n\xd7\xa3\x81\x1c" + b"\x82\x01\x01" + b"\x00" + b"10", "test"
    )
    assert stream.real() == pytest.approx(0.04, rel=1e-7)
    assert stream.integer() == -257
    assert stream.integer() == 0
    assert stream.boolean() is True
    assert stream.boolean() is False
    assert stream.exhausted


@pytest.mark.parametrize("fraction", [0.0, 1e-5, 0.001, 0.25, 0.5, 0.999, 0.99999])
def test_rejects_a_truncated_file(fraction: float, dlib_model_file: Path, tmp_path: Path) -> None:
    data = dlib_model_file.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(dlib_format.DlibFormatError, match="not a dlib network file"):
        dlib_format.read_network(truncated)


def test_rejects_trailing_bytes(dlib_model_file: Path, tmp_path: Path) -> None:
    extended = tmp_path / "extended.dat"
    extended.write_bytes(dlib_model_file.read_bytes() + b"\x01\x02")
    with pytest.raises(dlib_format.DlibFormatError, match="unexpected bytes after the last layer"):
        dlib_format.read_network(extended)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(64),
        b"not a model at all",
        np.random.default_rng(0).bytes(4096),
    ],
    ids=["png", "text", "random"],
)
def test_rejects_a_foreign_file(content: bytes, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.dat"
    foreign.write_bytes(content)
    with pytest.raises(dlib_format.DlibFormatError, match="not a dlib network file"):
        dlib_format.read_network(foreign)


def test_rejects_another_dlib_model() -> None:
    # A real dlib file, but a shape predictor rather than a DNN.
    with pytest.raises(dlib_format.DlibFormatError, match="not a dlib network file"):
        dlib_format.read_network(packaged_model_file("shape_predictor_5_face_landmarks.dat"))


def test_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(dlib_format.DlibFormatError, match="Cannot read"):
        dlib_format.read_network(tmp_path / "absent.dat")
