"""Decode one image file into a cropped, resized RGB uint8 array, or say why not.

Runs in worker processes: imports PIL and numpy only (never torch).

Choices:
- JPEG draft mode: libjpeg can decode at 1/2, 1/4 or 1/8 scale by truncating the
  DCT, which is both much faster and a proper low-pass (no aliasing). We pick the
  largest scale that still leaves the crop at least ``size`` pixels wide, then
  resize the rest of the way.
- Resize: Pillow LANCZOS, given the crop as a float ``box`` in the (possibly
  reduced) image so crop and resize are one step with no rounding of the box.
  LANCZOS is Pillow's sharpest antialiased filter: it keeps detail up to the
  target's Nyquist limit and suppresses aliasing, at a negligible cost here.
- Grayscale (R == G == B at every pixel of the whole image) is tested on the
  decoded image. A draft decode can differ from a full decode by rounding, so an
  image that looks gray or nearly gray (channels within GRAY_RECHECK_TOL) at
  reduced scale is decided again on a full decode: the test is then exactly the
  full-resolution one for every image that could be gray, at the cost of a few
  extra decodes (on LFW: the 39 grayscale ones and a handful of near-gray ones).
- Alpha is composited onto black (transparent pixels become black, like LFW's
  black corners, rather than showing whatever colour hides under alpha = 0).
- 16-bit images are scaled to 8 bits (value / 257), not clipped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from began.data.crop import CropSpec, crop_box
from began.errors import one_line

MIN_SIDE = 16  # images whose shorter side is smaller are skipped: nothing to learn from them
GRAY_RECHECK_TOL = 8  # max |R-G|, |G-B| of a draft decode that triggers an exact full decode
DRAFT_SCALES = (8, 4, 2)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transpose that makes the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SINGLE_CHANNEL = ("L", "1", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
RESAMPLE = Image.Resampling.LANCZOS

OK = "ok"
GRAYSCALE = "grayscale"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class DecodeOptions:
    size: int
    crop: CropSpec
    keep_grayscale: bool


@dataclass(frozen=True)
class Decoded:
    """The outcome for one file: pixels (size, size, 3) uint8 when status is OK."""

    name: str
    status: str  # OK, GRAYSCALE or UNREADABLE
    message: str = ""  # why it was skipped, or what conversion was applied to a kept image
    pixels: np.ndarray | None = None


class _Skip(Exception):
    """Raised inside the decoder to skip a file with a reason."""


def decode_image(
    name: str, options: DecodeOptions, path: str | None = None, data: bytes | None = None
) -> Decoded:
    """Decode the file at ``path`` (or the bytes ``data``); never raises for a bad file."""
    try:
        return _decode(name, options, path, data)
    except _Skip as skip:
        return Decoded(name, UNREADABLE, str(skip))
    except Image.DecompressionBombError as exc:
        return Decoded(name, UNREADABLE, f"too large ({one_line(exc)})")
    except Exception as exc:
        # Corrupt files make PIL raise almost anything (OSError, SyntaxError, ValueError,
        # struct.error, ...). One bad file must never abort a 13,000-file load.
        return Decoded(name, UNREADABLE, _describe(exc))


def _describe(exc: Exception) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image file PIL can read"
    return f"unreadable ({one_line(exc)})"


def _open(path: str | None, data: bytes | None) -> Image.Image:
    if data is not None:
        return Image.open(io.BytesIO(data))
    assert path is not None
    return Image.open(path)


def _decode(name: str, options: DecodeOptions, path: str | None, data: bytes | None) -> Decoded:
    with _open(path, data) as image:
        # Camera photos store their rotation in EXIF; crop in the upright frame.
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        width, height = image.size
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if min(width, height) < MIN_SIDE:
            raise _Skip(f"too small ({width}x{height}; need >= {MIN_SIDE} px on each side)")
        try:
            box = crop_box(options.crop, width, height)
        except ValueError as exc:
            raise _Skip(str(exc)) from None
        scale = _draft(image, box, options.size)
        image.load()  # truncated or corrupt data fails here
        if image.mode in _SINGLE_CHANNEL and not options.keep_grayscale:
            # Single-channel images are grayscale by construction: no need to convert.
            return Decoded(name, GRAYSCALE, f"grayscale (mode {image.mode})")
        rgb, note = to_rgb(image)
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
        if not options.keep_grayscale and _is_gray(np.asarray(rgb), scale, path, data):
            return Decoded(name, GRAYSCALE, "grayscale (R == G == B)")
        scaled = tuple(value / scale for value in box)
        out = rgb.resize((options.size, options.size), RESAMPLE, box=scaled)
        return Decoded(name, OK, note, np.asarray(out, dtype=np.uint8))


def _draft(image: Image.Image, box: tuple[int, int, int, int], size: int) -> float:
    """Ask libjpeg for the smallest DCT scale that keeps the crop >= size; return the scale."""
    if image.format != "JPEG":
        return 1.0
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    for factor in DRAFT_SCALES:
        if crop_w // factor >= size and crop_h // factor >= size:
            width, height = image.size
            result = image.draft(None, (width // factor, height // factor))
            if result is None:  # libjpeg cannot scale this file; decode it whole
                return 1.0
            return width / result[1][2]
    return 1.0


def _is_gray(array: np.ndarray, scale: float, path: str | None, data: bytes | None) -> bool:
    spread = _channel_spread(array)
    if scale == 1.0 or spread > GRAY_RECHECK_TOL:
        return spread == 0
    with _open(path, data) as full:  # near-gray at reduced scale: decide at full scale
        full.load()
        rgb, _ = to_rgb(full)
        return _channel_spread(np.asarray(rgb)) == 0


def _channel_spread(array: np.ndarray) -> int:
    """max |R - G| and |G - B| over all pixels (0 means R == G == B everywhere)."""
    r, g, b = (array[..., i].astype(np.int16) for i in range(3))
    return int(max(np.abs(r - g).max(), np.abs(g - b).max()))


def to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    """Convert any PIL mode to 8-bit RGB; the note says what was done ("" for RGB)."""
    mode = image.mode
    if mode == "RGB":
        return image, ""
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        return _composite_on_black(
            image.convert("RGBA")
        ), f"{mode} with alpha: composited onto black"
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(image), f"converted {mode} (high bit depth) to 8-bit RGB"
    return image.convert("RGB"), f"converted {mode} to RGB"


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    array = np.asarray(rgba).astype(np.uint16)
    alpha = array[..., 3:4]
    rgb = (array[..., :3] * alpha + 127) // 255  # rounded rgb * alpha / 255
    return Image.fromarray(rgb.astype(np.uint8))


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0  # the 16-bit range 0..65535 onto 0..255
    elif image.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0  # float images are usually in [0, 1]
    elif values.size and values.max() > 255:
        values = values / 257.0  # 32-bit "I" from a 16-bit file: assume the 16-bit range
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if gray.ndim == 3:  # multi-channel high-depth modes are not expected; keep three
        gray = gray[..., :3]
        return Image.fromarray(gray)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
