"""Training data: load, crop, resize, cache, split and batch face images.

Public API::

    load_images(source, image_size, crop="0.56", keep_grayscale=False,
                cache_dir=None, workers=None, progress=False) -> ImageSet
    builtin_faces(image_size) -> ImageSet
    split_holdout(images, holdout) -> (train, held_out)
    BatchSampler(images, batch_size, seed).batch(step) -> float tensor in [-1, 1]
    parse_crop(spec) -> CropSpec; crop_box(spec, width, height) -> box
    ImageSet, DataError

Names are imported lazily (PEP 562): ``began.data.crop`` is imported by the config
module and must not pull in numpy, PIL or torch, and decode worker processes need
only PIL and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from began.data.crop import CropSpec, crop_box, parse_crop
from began.data.imageset import BUILTIN_SOURCE, DataError, ImageSet

if TYPE_CHECKING:
    from began.data.load import builtin_faces, load_images
    from began.data.sampler import BatchSampler, split_holdout

_LAZY = {
    "load_images": "began.data.load",
    "builtin_faces": "began.data.load",
    "split_holdout": "began.data.sampler",
    "BatchSampler": "began.data.sampler",
}

__all__ = [
    "BUILTIN_SOURCE",
    "BatchSampler",
    "CropSpec",
    "DataError",
    "ImageSet",
    "builtin_faces",
    "crop_box",
    "load_images",
    "parse_crop",
    "split_holdout",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'began.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
