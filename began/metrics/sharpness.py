"""Sharpness: scikit-image's no-reference blur measure (Crete et al. 2007).

`skimage.measure.blur_effect` gives 0 for a sharp image and 1 for a maximally
blurred one; it works on luminance (it converts RGB to grey itself), with its
default re-blurring filter of 11 px. It runs on the CPU, one image at a time,
which is cheap at 16-128 px.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import blur_effect


def mean_blur_effect(images: torch.Tensor) -> float:
    """Mean blur_effect over uint8 images (N, 3, S, S); 0 = sharp, 1 = blurry."""
    if images.shape[0] < 1:
        raise ValueError("blur_effect needs at least 1 image")
    array = images.cpu().numpy()  # (N, 3, S, S) uint8, one transfer
    return float(np.mean([blur_effect(image, channel_axis=0) for image in array]))
