"""The loaded dataset and the loader's error type (no heavy imports: numpy only for typing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BUILTIN_SOURCE = "builtin:skimage.lfw_subset"


class DataError(ValueError):
    """The data source cannot be used; the one-line message names the path or option."""


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed training images and where they came from."""

    # (N, 3, H, W) uint8, NCHW so the trainer can index and convert on the device.
    images: np.ndarray = field(repr=False)
    source: str  # absolute path, or BUILTIN_SOURCE
    # Content hash of the pixels and size/crop options: identifies the dataset across machines.
    fingerprint: str
    found: int
    kept: int
    skipped_grayscale: int
    skipped_unreadable: int
    grayscale_kept: bool

    def __post_init__(self) -> None:
        skipped = self.kept + self.skipped_grayscale + self.skipped_unreadable
        if self.found != skipped:
            raise ValueError(f"ImageSet counts do not add up: found {self.found} != {skipped}")
        if len(self.images) != self.kept:
            raise ValueError(f"ImageSet holds {len(self.images)} images but kept = {self.kept}")

    def summary(self) -> dict[str, int]:
        return {
            "found": self.found,
            "kept": self.kept,
            "skipped_grayscale": self.skipped_grayscale,
            "skipped_unreadable": self.skipped_unreadable,
        }
