"""decode_image: accepted formats, refusals with typed errors, colour modes and orientation.

Every input is made here with Pillow and numpy; none is read from disk.
"""

from __future__ import annotations

import functools
import io
import struct
import time
import warnings
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageOps

from app.pipeline import decode
from app.pipeline.decode import ACCEPTED_FORMATS, DEFAULT_MAX_BYTES, DecodedImage, decode_image
from app.pipeline.errors import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedMediaTypeError,
)

RED = (220, 20, 30)
BLUE = (20, 40, 210)
WHITE = (255, 255, 255)


def encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


@functools.cache
def astronaut() -> npt.NDArray[np.uint8]:
    from skimage import data

    return np.asarray(data.astronaut(), dtype=np.uint8)


@functools.cache
def astronaut_jpeg() -> bytes:
    return encode(Image.fromarray(astronaut()), "JPEG", quality=90)


def patched_png_size(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR (and its CRC) is rewritten to declare ``width`` x ``height``."""
    png = bytearray(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    # Signature (8 bytes), IHDR length (4) and type (4), then width and height; the CRC covers
    # the chunk type and its 13 data bytes and follows them.
    assert png[12:16] == b"IHDR"
    struct.pack_into(">II", png, 16, width, height)
    struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def assert_valid_result(result: DecodedImage) -> None:
    assert result.pixels.dtype == np.uint8
    assert result.pixels.ndim == 3 and result.pixels.shape[2] == 3
    assert result.pixels.flags.c_contiguous


# --- Real photos and the accepted formats ------------------------------------------------------


def test_real_photo_decodes_to_rgb() -> None:
    result = decode_image(astronaut_jpeg())
    assert_valid_result(result)
    assert result.pixels.shape == (512, 512, 3)
    assert result.format == "JPEG"
    assert result.orientation == 1
    error = np.abs(result.pixels.astype(np.int16) - astronaut().astype(np.int16)).mean()
    assert error < 4


@pytest.mark.parametrize(
    ("image_format", "params", "lossless"),
    [
        ("PNG", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("BMP", {}, True),
        ("TIFF", {}, True),
        ("TIFF", {"compression": "tiff_lzw"}, True),
        ("JPEG", {"quality": 95}, False),
    ],
)
def test_accepted_formats_decode(image_format: str, params: dict[str, Any], lossless: bool) -> None:
    original = astronaut()[::4, ::4].copy()
    result = decode_image(encode(Image.fromarray(original), image_format, **params))
    assert_valid_result(result)
    assert result.format == image_format
    assert result.format in ACCEPTED_FORMATS
    assert result.pixels.shape == original.shape
    if lossless:
        np.testing.assert_array_equal(result.pixels, original)


def test_mpo_is_reported_as_jpeg() -> None:
    first, second = Image.new("RGB", (16, 8), RED), Image.new("RGB", (16, 8), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    result = decode_image(data)
    assert result.format == "JPEG"
    assert np.abs(result.pixels[4, 8].astype(int) - RED).max() < 10


def test_one_pixel_png() -> None:
    result = decode_image(encode(Image.new("RGB", (1, 1), RED), "PNG"))
    assert result.pixels.shape == (1, 1, 3)
    assert tuple(result.pixels[0, 0]) == RED


# --- Refusals ------------------------------------------------------------------------------------


def test_empty_data_is_invalid() -> None:
    with pytest.raises(InvalidImageError, match="empty") as caught:
        decode_image(b"")
    assert caught.value.code == "invalid_image"


def test_text_is_not_an_image() -> None:
    # What a client sends when it uploads a text file renamed to photo.jpg.
    with pytest.raises(InvalidImageError, match="not an image") as caught:
        decode_image(b"hello")
    assert caught.value.code == "invalid_image"


def test_truncated_jpeg_is_invalid_without_internal_text() -> None:
    data = astronaut_jpeg()
    with pytest.raises(InvalidImageError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.code == "invalid_image"
    assert "truncated or corrupt" in caught.value.detail
    # Pillow's own message ("image file is truncated (N bytes not processed)") stays internal.
    assert "bytes not processed" not in caught.value.detail
    assert isinstance(caught.value.__cause__, OSError)


def test_corrupt_image_data_is_invalid() -> None:
    png = bytearray(encode(Image.fromarray(astronaut()[:64, :64].copy()), "PNG"))
    png[60:200] = bytes(140)
    with pytest.raises(InvalidImageError) as caught:
        decode_image(bytes(png))
    assert caught.value.code == "invalid_image"


def test_zero_width_image_is_invalid() -> None:
    with pytest.raises(InvalidImageError) as caught:
        decode_image(patched_png_size(0, 8))
    assert caught.value.code == "invalid_image"


def test_over_max_bytes_is_refused() -> None:
    with pytest.raises(ImageTooLargeError, match="10 MiB") as caught:
        decode_image(bytes(DEFAULT_MAX_BYTES + 1))
    assert caught.value.code == "payload_too_large"

    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    with pytest.raises(ImageTooLargeError, match="MiB"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).pixels.shape == (8, 8, 3)


def test_declared_huge_png_is_refused_before_decoding() -> None:
    data = patched_png_size(30000, 30000)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError, match="pixels; the limit is") as caught:
            decode_image(data)
    assert time.perf_counter() - started < 1.0
    assert caught.value.code == "payload_too_large"
    assert "30000x30000" in caught.value.detail
    assert not caught_warnings


def test_no_decompression_bomb_warning_in_pillows_warning_range() -> None:
    # 100 million pixels is above Pillow's warning threshold (about 89 million) and below its error
    # threshold: Image.open would warn here, decode_image only refuses.
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError):
            decode_image(patched_png_size(10000, 10000))
    assert not [
        w for w in caught_warnings if issubclass(w.category, Image.DecompressionBombWarning)
    ]


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    assert decode_image(data, max_pixels=64).pixels.shape == (8, 8, 3)
    with pytest.raises(ImageTooLargeError, match="8x8"):
        decode_image(data, max_pixels=63)


def test_pillows_decompression_bomb_error_becomes_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # TIFF checks its tile size against Pillow's limit while loading; lowering that limit for this
    # test is the only way to reach the error with a small file.
    data = encode(Image.new("RGB", (8, 8), RED), "TIFF")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data)
    assert caught.value.code == "payload_too_large"
    assert isinstance(caught.value.__cause__, Image.DecompressionBombError)


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [("ICO", "RGBA"), ("TGA", "RGB"), ("PCX", "RGB"), ("PPM", "RGB"), ("PPM", "L")],
)
def test_formats_pillow_reads_but_we_do_not_accept(image_format: str, mode: str) -> None:
    data = encode(Image.new(mode, (16, 16)), image_format)
    with pytest.raises(UnsupportedMediaTypeError, match="JPEG, PNG, WebP, BMP, GIF or TIFF") as c:
        decode_image(data)
    assert c.value.code == "unsupported_media_type"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic" + bytes(64), "HEIF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), "AVIF"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b'\xef\xbb\xbf  <?xml version="1.0"?>\n<svg/>', "XML"),
    ],
)
def test_known_formats_we_refuse_by_magic_bytes(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        decode_image(data)
    assert caught.value.code == "unsupported_media_type"
    assert named in caught.value.detail
    assert "JPEG, PNG, WebP, BMP, GIF or TIFF" in caught.value.detail


def test_other_iso_bmff_files_are_not_images() -> None:
    # An MP4 video also starts with an ftyp box, but none of the image brands.
    with pytest.raises(InvalidImageError):
        decode_image(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64))


def test_invalid_limits_are_argument_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_image(b"x", max_pixels=0)


# --- Animation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "params"),
    [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})],
)
def test_animated_images_give_the_first_frame(image_format: str, params: dict[str, Any]) -> None:
    frames = [Image.new("RGB", (12, 10), colour) for colour in (RED, BLUE, (10, 200, 10))]
    data = encode(
        frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, **params
    )
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    result = decode_image(data)
    assert result.format == image_format
    assert result.pixels.shape == (10, 12, 3)
    assert np.abs(result.pixels.astype(int) - RED).max() <= 2


# --- Colour modes --------------------------------------------------------------------------------


def test_cmyk_jpeg() -> None:
    # Pillow writes CMYK JPEGs the way Adobe does (inverted, with an APP14 marker).
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    result = decode_image(encode(cmyk, "JPEG", quality=95))
    assert result.pixels.shape == (16, 16, 3)
    red, green, blue = (int(v) for v in result.pixels[8, 8])
    assert red > 230 and green < 30 and blue < 30


def test_sixteen_bit_greyscale_png_keeps_its_gradient() -> None:
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    image = Image.fromarray(gradient)
    assert image.mode == "I;16"
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    pixels = decode_image(data).pixels
    assert pixels.shape == (4, 256, 3)
    assert not (pixels == 255).all()
    row = pixels[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()
    assert len(np.unique(row)) > 200
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])


def test_sixteen_bit_big_endian_greyscale() -> None:
    gradient = np.arange(0, 65536, 256, dtype=np.uint16).reshape(1, 256)
    image = Image.frombytes("I;16B", (256, 1), gradient.astype(">u2").tobytes())
    pixels = decode._rgb_pixels(image)
    np.testing.assert_array_equal(pixels[0, :, 0], np.arange(256))


def test_wide_integer_and_float_greyscale_are_stretched() -> None:
    wide = np.linspace(-1000, 3000, 100).astype(np.int32).reshape(1, 100)
    pixels = decode_image(encode(Image.fromarray(wide, mode="I"), "TIFF")).pixels[0, :, 0]
    assert pixels[0] == 0 and pixels[-1] == 255
    assert (np.diff(pixels.astype(int)) >= 0).all()

    narrow = np.linspace(0, 200, 100).astype(np.float32).reshape(1, 100)
    pixels = decode_image(encode(Image.fromarray(narrow, mode="F"), "TIFF")).pixels[0, :, 0]
    np.testing.assert_array_equal(pixels, np.rint(narrow[0]).astype(np.uint8))


def test_greyscale_jpeg() -> None:
    grey = astronaut()[::4, ::4].mean(axis=2).astype(np.uint8)
    result = decode_image(encode(Image.fromarray(grey, mode="L"), "JPEG", quality=95))
    assert result.pixels.shape == (128, 128, 3)
    np.testing.assert_array_equal(result.pixels[..., 0], result.pixels[..., 2])
    assert np.abs(result.pixels[..., 0].astype(int) - grey).mean() < 3


def test_rgba_png_is_composited_over_white() -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # Fully transparent.
    rgba[0, 1] = (*RED, 255)  # Opaque.
    rgba[0, 2] = (0, 0, 0, 128)  # Half-transparent black.
    pixels = decode_image(encode(Image.fromarray(rgba, mode="RGBA"), "PNG")).pixels
    assert tuple(pixels[0, 0]) == WHITE
    assert tuple(pixels[0, 1]) == RED
    assert all(120 <= v <= 135 for v in pixels[0, 2])


def test_palette_png_with_transparency() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    data = encode(image, "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    pixels = decode_image(data).pixels
    assert tuple(pixels[0, 0]) == RED
    assert tuple(pixels[0, 1]) == WHITE


def test_greyscale_with_alpha_png() -> None:
    la = np.array([[[50, 255], [50, 0]]], dtype=np.uint8)
    pixels = decode_image(encode(Image.fromarray(la, mode="LA"), "PNG")).pixels
    assert tuple(pixels[0, 0]) == (50, 50, 50)
    assert tuple(pixels[0, 1]) == WHITE


@pytest.mark.parametrize("mode", ["1", "L", "P", "PA", "LA", "CMYK", "YCbCr", "LAB", "I", "F"])
def test_tiff_colour_modes_become_rgb(mode: str) -> None:
    result = decode_image(encode(Image.new(mode, (5, 3)), "TIFF"))
    assert_valid_result(result)
    assert result.pixels.shape == (3, 5, 3)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("La", (25, 128), (152, 152, 152)),
        ("RGBa", (0, 0, 0, 0), WHITE),
    ],
)
def test_modes_no_file_format_carries(
    mode: str, colour: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    pixels = decode._rgb_pixels(Image.new(mode, (2, 2), colour))
    assert pixels.shape == (2, 2, 3)
    assert np.abs(pixels[0, 0].astype(int) - expected).max() <= 1


# --- EXIF orientation ----------------------------------------------------------------------------


def landscape_with_marker() -> Image.Image:
    """A 40x20 white image with a red block in its top-left corner."""
    image = Image.new("RGB", (40, 20), WHITE)
    image.paste(RED, (0, 0, 8, 8))
    return image


def with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def is_red(pixel: npt.NDArray[np.uint8]) -> bool:
    return bool(np.abs(pixel.astype(int) - RED).max() < 30)


@pytest.mark.parametrize(
    ("orientation", "marker"),
    # The stored top-left corner ends up top-right after turning clockwise (6), bottom-left after
    # turning anticlockwise (8).
    [(6, (2, -3)), (8, (-3, 2))],
)
def test_exif_rotated_jpeg_is_turned_upright(orientation: int, marker: tuple[int, int]) -> None:
    data = encode(landscape_with_marker(), "JPEG", quality=95, exif=with_orientation(orientation))
    result = decode_image(data)
    assert result.orientation == orientation
    assert result.pixels.shape == (40, 20, 3)
    assert result.pixels.flags.c_contiguous
    assert is_red(result.pixels[marker])
    corners = [(2, 2), (2, -3), (-3, 2), (-3, -3)]
    assert sum(is_red(result.pixels[corner]) for corner in corners) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    original = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = encode(Image.fromarray(original), "PNG", exif=with_orientation(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    result = decode_image(data)
    assert result.orientation == orientation
    np.testing.assert_array_equal(result.pixels, expected)
    assert result.pixels.flags.c_contiguous


def test_corrupt_exif_does_not_break_decode() -> None:
    # A TIFF header that announces one IFD entry (the orientation) and then ends.
    corrupt = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06"
    data = encode(landscape_with_marker(), "JPEG", exif=corrupt)
    with warnings.catch_warnings():
        # Pillow warns about the damaged block; that is expected here.
        warnings.simplefilter("ignore")
        result = decode_image(data)
    assert result.orientation == 1
    assert result.pixels.shape == (20, 40, 3)


def test_unreadable_exif_counts_as_no_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_getexif(self: Image.Image) -> Image.Exif:
        raise struct.error("unpack requires a buffer of 4 bytes")

    data = encode(landscape_with_marker(), "JPEG", exif=with_orientation(6))
    monkeypatch.setattr(Image.Image, "getexif", broken_getexif)
    result = decode_image(data)
    assert result.orientation == 1
    assert result.pixels.shape == (20, 40, 3)
