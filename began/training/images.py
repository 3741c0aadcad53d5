"""Image grids: tensors in [-1, 1] to uint8 pictures for logs and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 in [0, 255], rounded (as an image file would store it)."""
    return ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def image_grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> one (rows*H, columns*W, 3) uint8 picture."""
    grid = make_grid(to_uint8(images).cpu(), nrow=columns, padding=padding, pad_value=0)
    return grid.permute(1, 2, 0).numpy()  # (H, W, 3)


RECONSTRUCTION_LABELS = ("x", "D(x)")


def reconstruction_grid(
    real: torch.Tensor, reconstruction: torch.Tensor, columns: int = 8, padding: int = 2
) -> np.ndarray:
    """Rows alternate: real images x, then their reconstructions D(x) right below, each
    row labelled on the left."""
    rows = []
    for start in range(0, real.shape[0], columns):
        rows += [real[start : start + columns], reconstruction[start : start + columns]]
    grid = image_grid(torch.cat(rows), columns=columns, padding=padding)
    return label_rows(grid, RECONSTRUCTION_LABELS, real.shape[-2] + padding, padding)


def label_rows(
    picture: np.ndarray, labels: tuple[str, ...], row_height: int, padding: int
) -> np.ndarray:
    """A margin on the left of `picture` naming its rows, `labels` in turn, in light grey
    on black (the grid's padding colour). Drawn at the grid's own resolution: `viewable`
    then upscales the letters with the images."""
    font = ImageFont.load_default()  # a bitmap or a FreeType font, by Pillow version
    boxes = [font.getbbox(label) for label in labels]  # (left, top, right, bottom)
    margin = Image.new("RGB", (max(b[2] for b in boxes) + 2 * padding + 2, picture.shape[0]))
    draw = ImageDraw.Draw(margin)
    for row in range(picture.shape[0] // row_height):
        label, box = labels[row % len(labels)], boxes[row % len(labels)]
        centre = padding + row * row_height + (row_height - padding) // 2
        top = centre - (box[1] + box[3]) // 2  # the letters' middle on the row's middle
        draw.text((padding + 1, top), label, fill=(200, 200, 200), font=font)
    return np.concatenate([np.asarray(margin), picture], axis=1)


VIEW_WIDTH = 1024  # px: a logged grid is upscaled to about this width


def viewable(picture: np.ndarray, width: int = VIEW_WIDTH) -> np.ndarray:
    """Upscale a grid by an integer factor (nearest neighbour: no invented detail) so that
    a 32x32 grid, 272 px wide, is not a thumbnail in `mlflow ui`."""
    factor = max(1, round(width / picture.shape[1]))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(picture: np.ndarray, path: Path | str) -> None:
    Image.fromarray(picture).save(path)
