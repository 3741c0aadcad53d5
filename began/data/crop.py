"""Crop specifications: which part of each source image becomes a training image.

Standard library only: the config module calls :func:`parse_crop` to validate
``TrainConfig.crop`` and must stay cheap to import.

Formats (``TrainConfig.crop``):

- ``"0.56"``: a number in (0, 1] is a centred square whose side is that fraction
  of the shorter image side. The default 0.56 keeps the ~140 px face of a 250x250
  LFW deep-funneled image and drops most background and the black rotated corners.
- ``"140"``: a whole number > 1 is a centred square of that many pixels, clamped
  to the shorter side when the image is smaller.
- ``"x0,y0,x1,y1"``: an explicit box in source pixels (right/bottom exclusive),
  clamped to the image. A non-square box is resized to a square, so it changes
  the aspect ratio: that is the caller's explicit choice.
- ``"none"``: no cropping for square images; a non-square image gets the centred
  square of its shorter side (the same as ``"1"``), so resizing to a square
  training image never distorts the aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_FORMATS = 'a fraction in (0, 1], a whole pixel size > 1, "x0,y0,x1,y1" or "none"'


@dataclass(frozen=True)
class CropSpec:
    """A parsed crop: ``kind`` is "fraction", "pixels", "box" or "none"."""

    kind: str
    fraction: float = 1.0  # kind == "fraction"
    pixels: int = 0  # kind == "pixels"
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # kind == "box"

    def canonical(self) -> str:
        """A normalised text form ("0.56" and " 0.560 " give the same), used in cache keys."""
        if self.kind == "fraction":
            return f"fraction:{self.fraction!r}"
        if self.kind == "pixels":
            return f"pixels:{self.pixels}"
        if self.kind == "box":
            return "box:" + ",".join(str(v) for v in self.box)
        return "none"


def _bad(spec: str, why: str = "") -> ValueError:
    detail = f" ({why})" if why else ""
    return ValueError(f"crop: expected {_FORMATS}, got {spec!r}{detail}")


def parse_crop(spec: str) -> CropSpec:
    """Parse a crop spec; raise ``ValueError("crop: ...")`` naming the bad value."""
    if not isinstance(spec, str):
        raise _bad(str(spec), f"not a string but {type(spec).__name__}")
    text = spec.strip().lower()
    if text == "none":
        return CropSpec("none")
    if "," in text:
        return _parse_box(spec, text)
    try:
        value = float(text)
    except ValueError:
        raise _bad(spec) from None
    if not math.isfinite(value) or value <= 0:
        raise _bad(spec, "must be > 0")
    if value <= 1:
        return CropSpec("fraction", fraction=value)
    if value != int(value):
        raise _bad(spec, "a size > 1 is in pixels and must be a whole number")
    return CropSpec("pixels", pixels=int(value))


def _parse_box(spec: str, text: str) -> CropSpec:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4:
        raise _bad(spec, f"a box needs 4 numbers, got {len(parts)}")
    try:
        x0, y0, x1, y1 = (int(part) for part in parts)
    except ValueError:
        raise _bad(spec, "box coordinates must be whole pixels") from None
    if x0 < 0 or y0 < 0:
        raise _bad(spec, "box coordinates must be >= 0")
    if x1 <= x0 or y1 <= y0:
        raise _bad(spec, "need x0 < x1 and y0 < y1")
    return CropSpec("box", box=(x0, y0, x1, y1))


def _centred_square(side: int, width: int, height: int) -> tuple[int, int, int, int]:
    side = max(1, min(side, width, height))
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def crop_box(spec: CropSpec, width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of ``spec`` in a width x height image.

    Raises ``ValueError`` when an explicit box lies entirely outside the image.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    short = min(width, height)
    if spec.kind == "fraction":
        return _centred_square(round(spec.fraction * short), width, height)
    if spec.kind == "pixels":
        return _centred_square(spec.pixels, width, height)
    if spec.kind == "box":
        x0, y0, x1, y1 = spec.box
        x1, y1 = min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"crop box {spec.box} lies outside the {width}x{height} image")
        return x0, y0, x1, y1
    return _centred_square(short, width, height)
