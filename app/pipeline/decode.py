"""Uploaded bytes -> an RGB pixel array: the first step of the pipeline.

``decode_image`` turns one upload into a ``[height, width, 3]`` uint8 RGB array that the face
detector can use, or raises one of the typed errors of ``app.pipeline.errors``. Uploads come from
untrusted clients, so the function is written to refuse cheaply and early:

1. Empty data, and data over ``max_bytes``, are refused before anything is parsed.
2. A few well-known formats that we do not accept but that Pillow would not name (HEIC/HEIF and
   AVIF, PDF, SVG/XML) are recognised by their magic bytes, so the client hears "unsupported
   format" rather than "not an image".
3. The format is identified from the content (there is no file name to trust). Only JPEG (and MPO,
   the multi-picture JPEG that phone cameras write, reported as "JPEG"), PNG, WebP, BMP, GIF and
   TIFF are decoded. Every other format Pillow can read (ICO, PSD, TGA, PCX, the Netpbm family
   PBM/PGM/PPM, ...) is refused: the service documents those six formats, and each extra decoder
   is extra attack surface.
4. The pixel count is read from the header and checked against ``max_pixels`` before a single
   pixel is decoded, so a small file that declares a huge canvas costs nothing.
5. The first frame is decoded, the EXIF orientation is applied, and the colour mode is converted
   to 8-bit RGB (see ``_rgb_pixels`` for how alpha, CMYK and high bit depths are handled).

Pillow's own decompression-bomb guard is not relied on, and its global settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) and the global warning filters are
never changed: the service decodes in many threads at once and those are process-wide. Because
``Image.open`` emits ``DecompressionBombWarning`` for large headers before a caller can look at the
size, the file is identified through Pillow's plugin registry (the same factories and magic-byte
checks that ``Image.open`` uses) and our stricter ``max_pixels`` check runs in its place. Should
Pillow still raise ``DecompressionBombError`` (or the warning, where a caller's filter turns it
into an exception) from inside a plugin, it becomes ``ImageTooLargeError``.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile

from app.pipeline.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

ACCEPTED_FORMATS: Final = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 50_000_000

_MIB: Final = 1024 * 1024
_ACCEPTED_SENTENCE: Final = "Send a JPEG, PNG, WebP, BMP, GIF or TIFF image."

# The accepted plugins are tried first, so that an exotic plugin without a magic-byte check can
# never claim a file that one of the formats we serve would read.
_ACCEPTED_PLUGIN_ORDER: Final[tuple[str, ...]] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# ISO-BMFF brands of HEIF (HEIC and its relatives) and AVIF still images and sequences.
_HEIF_BRANDS: Final = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}

# What Pillow raises from a plugin for truncated or corrupt data. Each of these is a decoding
# failure of the upload, never a bug of ours worth a 500.
_DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    ArithmeticError,
)

_EXIF_ORIENTATION_TAG: Final = 0x0112

# Pillow modes whose alpha is premultiplied into the colour values.
_PREMULTIPLIED_MODES: Final = frozenset({"La", "RGBa"})


@dataclass(frozen=True)
class DecodedImage:
    """One decoded upload."""

    pixels: npt.NDArray[np.uint8]
    """``[height, width, 3]`` RGB, C-contiguous, with the EXIF orientation applied."""
    format: str
    """Pillow's format name, e.g. ``"JPEG"`` or ``"PNG"``; MPO is reported as ``"JPEG"``."""
    orientation: int
    """The EXIF orientation (1-8) that was applied; 1 when there was none."""


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decodes an uploaded image into RGB pixels, refusing what the service does not accept.

    Raises ``InvalidImageError`` (empty, not an image, truncated or corrupt, no pixels),
    ``UnsupportedMediaTypeError`` (a format other than JPEG, PNG, WebP, BMP, GIF or TIFF) or
    ``ImageTooLargeError`` (more than ``max_bytes`` bytes or more than ``max_pixels`` pixels).
    """
    if max_bytes <= 0 or max_pixels <= 0:
        raise ValueError("max_bytes and max_pixels must be positive; pass the limits to enforce.")
    if not data:
        raise InvalidImageError("The image is empty.")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"The image is larger than the limit of {_mebibytes(max_bytes)}.")

    refused = _sniff_refused_format(data)
    if refused is not None:
        raise UnsupportedMediaTypeError(f"{refused} images are not supported. {_ACCEPTED_SENTENCE}")

    try:
        with _open_image(data) as image:
            image_format = image.format or ""
            if image_format not in ACCEPTED_FORMATS:
                raise UnsupportedMediaTypeError(
                    f"The image is in the {image_format} format, which is not supported. "
                    f"{_ACCEPTED_SENTENCE}"
                )
            _check_size(image.size, max_pixels=max_pixels)
            # The first frame: Pillow opens animated GIF, PNG and WebP files positioned on it.
            image.load()
            orientation = _exif_orientation(image)
            pixels = _rgb_pixels(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(
            f"The image has too many pixels; the limit is {max_pixels:,} pixels."
        ) from error
    except _DECODE_ERRORS as error:
        raise InvalidImageError(
            "The image could not be decoded; the file may be truncated or corrupt."
        ) from error

    return DecodedImage(
        pixels=np.ascontiguousarray(_apply_orientation(pixels, orientation)),
        format="JPEG" if image_format == "MPO" else image_format,
        orientation=orientation,
    )


def _mebibytes(size: int) -> str:
    return f"{size // _MIB} MiB" if size % _MIB == 0 else f"{size / _MIB:.3g} MiB"


def _sniff_refused_format(data: bytes) -> str | None:
    """Names a well-known format we refuse, from its magic bytes; ``None`` for anything else."""
    # An ISO-BMFF file starts with an 'ftyp' box: size (4 bytes), 'ftyp', the major brand, a minor
    # version, then compatible brands up to the end of the box.
    if data[4:8] == b"ftyp":
        box_size = int.from_bytes(data[0:4], "big")
        box_end = min(max(box_size, 16), len(data), 256)
        brands = [data[8:12]] + [data[i : i + 4] for i in range(16, box_end - 3, 4)]
        for brand in brands:
            if brand in _HEIF_BRANDS:
                return _HEIF_BRANDS[brand]
    if data.startswith(b"%PDF"):
        return "PDF"
    # SVG is XML text; allow a UTF-8 byte-order mark and leading white space before it.
    text_start = data[:512].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text_start.startswith(b"<svg"):
        return "SVG"
    if text_start.startswith(b"<?xml"):
        return "SVG and other XML"
    return None


def _open_image(data: bytes) -> ImageFile.ImageFile:
    """Identifies ``data`` by content and opens it lazily (header only), like ``Image.open``.

    This walks Pillow's plugin registry as ``Image.open`` does, minus its decompression-bomb
    warning (see the module docstring): a plugin's magic-byte check on the first 16 bytes, then its
    factory, with the errors that mean "not this format" moving on to the next plugin.
    """
    Image.init()
    # A snapshot, because another thread may still be registering plugins.
    registered = tuple(Image.ID)
    order = [name for name in _ACCEPTED_PLUGIN_ORDER if name in registered]
    order += [name for name in registered if name not in _ACCEPTED_PLUGIN_ORDER]
    prefix = data[:16]
    for name in order:
        entry = Image.OPEN.get(name)
        if entry is None:
            continue
        factory, accept = entry
        try:
            if accept is not None:
                verdict = accept(prefix)
                # A string means "this format, but its codec is not installed".
                if isinstance(verdict, str) or not verdict:
                    continue
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise InvalidImageError(
        f"The data is not an image in a format we can read. {_ACCEPTED_SENTENCE}"
    )


def _check_size(size: tuple[int, int], *, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"The image has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,} pixels."
        )


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8), or 1 when it is missing, invalid, or the EXIF is unreadable."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:
        # EXIF blocks are often damaged by editors and uploaders, and Pillow's parser can raise
        # almost anything on them. The orientation is optional metadata: an unreadable block must
        # not cost the user their upload, so it counts as "no rotation".
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(pixels: npt.NDArray[np.uint8], orientation: int) -> npt.NDArray[np.uint8]:
    """Turns stored pixels upright; the same transforms as ``ImageOps.exif_transpose``.

    Done here on the RGB array rather than with ``exif_transpose``, because that function also
    rewrites the metadata (which we discard) and can fail on a damaged block, losing a valid
    orientation with it.
    """
    if orientation == 2:  # Mirrored left to right.
        return pixels[:, ::-1]
    if orientation == 3:  # Rotated 180 degrees.
        return pixels[::-1, ::-1]
    if orientation == 4:  # Mirrored top to bottom.
        return pixels[::-1]
    if orientation == 5:  # Mirrored across the main diagonal (Pillow's TRANSPOSE).
        return pixels.transpose(1, 0, 2)
    if orientation == 6:  # Stored rotated 90 degrees anticlockwise: turn it clockwise.
        return np.rot90(pixels, k=-1)
    if orientation == 7:  # Mirrored across the other diagonal (Pillow's TRANSVERSE).
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:  # Stored rotated 90 degrees clockwise: turn it anticlockwise.
        return np.rot90(pixels, k=1)
    return pixels


def _rgb_pixels(image: Image.Image) -> npt.NDArray[np.uint8]:
    """Converts a loaded image of any Pillow mode to a ``[height, width, 3]`` uint8 RGB array.

    - RGB is taken as is; 1, L, P without transparency, CMYK (Pillow already undoes Adobe's
      inverted CMYK when it decodes a JPEG), YCbCr, LAB, HSV and RGBX go through ``convert``.
    - Anything with transparency (RGBA, LA, PA, P or L or RGB with a transparent colour or index)
      is composited over white: a transparent pixel becomes white, an opaque one keeps its colour.
    - High bit depths become 8-bit greyscale without ``convert("L")``, which clips 16-bit values
      at 255 and turns most 16-bit images white. Unsigned 16-bit (I;16, I;16L, I;16B, ...) keeps
      the top byte (value >> 8), the type's full range. 32-bit integer (I) and float (F) have no
      conventional range, so values already inside 0..255 are kept and anything wider is stretched
      linearly from its own min..max to 0..255. A transparent key colour on these modes is ignored.
    """
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        grey = _grey_to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    if mode in _PREMULTIPLIED_MODES:
        # Premultiplied colour c' = c * a / 255 over white is c' + (255 - a).
        values = np.asarray(image).astype(np.uint16)
        colour, alpha = values[:, :, :-1], values[:, :, -1:]
        composited: npt.NDArray[np.uint8] = np.minimum(colour + (255 - alpha), 255).astype(np.uint8)
        if composited.shape[2] == 1:
            composited = np.repeat(composited, 3, axis=2)
        return composited
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    try:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except ValueError as error:
        raise InvalidImageError(
            f"The image uses the {mode} colour mode, which cannot be converted to RGB."
        ) from error


def _grey_to_uint8(values: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Scales one greyscale channel of a high bit depth to 0..255 (see ``_rgb_pixels``)."""
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        # astype also brings big-endian I;16B data to the native byte order.
        return np.right_shift(values.astype(np.uint16), 8).astype(np.uint8)
    # float32 is plenty for 256 output levels and halves the memory of float64.
    grey = values.astype(np.float32)
    finite = np.isfinite(grey)
    if finite.any():
        low, high = float(grey[finite].min()), float(grey[finite].max())
        if (low < 0.0 or high > 255.0) and high > low:
            grey = (grey - np.float32(low)) * np.float32(255.0 / (high - low))
    # NaN carries no brightness; infinities saturate.
    grey = np.nan_to_num(grey, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
