"""BEGAN networks (paper Figure 1). No I/O here: no prints, no tracking, no files.

- Decoder: linear h -> 8x8xn, then per scale `repeat` 3x3 convs with ELU and a
  nearest-neighbour x2 upsampling between scales, then a 3x3 conv to RGB with a
  linear output. The generator G is a decoder.
- Encoder: 3x3 conv RGB -> n, then per scale `repeat` convs with n, 2n, 3n, ...
  filters and a stride-2 conv between scales (sub-sampling), down to 8x8, then a
  linear layer to h.
- Discriminator D: an autoencoder (encoder + its own decoder); its output is
  the reconstruction of its input.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

BASE_SIZE = 8  # every network starts or ends at 8x8


def num_scales(image_size: int) -> int:
    """log2(size) - 2: 16 -> 2, 32 -> 3, 64 -> 4, 128 -> 5 scales, all ending at 8x8."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return int(math.log2(image_size)) - 2


def _conv_block(in_channels: int, out_channels: int, repeat: int) -> nn.Sequential:
    """`repeat` 3x3 convs with ELU; the first one maps in_channels to out_channels."""
    layers: list[nn.Module] = []
    for i in range(repeat):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1)]
        layers += [nn.ELU(inplace=True)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, image_size: int, filters: int, hidden: int, repeat: int) -> None:
        super().__init__()
        scales = num_scales(image_size)
        self.stem = nn.Sequential(nn.Conv2d(3, filters, 3, padding=1), nn.ELU(inplace=True))
        blocks: list[nn.Module] = []
        for scale in range(scales):
            channels = filters * (scale + 1)
            blocks.append(_conv_block(channels, channels, repeat))
            if scale < scales - 1:
                # Sub-sampling: a stride-2 conv that also grows the filters by n.
                blocks += [nn.Conv2d(channels, channels + filters, 3, stride=2, padding=1)]
                blocks += [nn.ELU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = filters * scales
        self.to_hidden = nn.Linear(self.out_channels * BASE_SIZE * BASE_SIZE, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, n*scales, 8, 8)
        return self.to_hidden(x.flatten(1))  # (B, h), no activation


class Decoder(nn.Module):
    def __init__(
        self, image_size: int, filters: int, hidden: int, repeat: int, skip: bool = False
    ) -> None:
        super().__init__()
        self.filters = filters
        self.skip = skip
        self.from_hidden = nn.Linear(hidden, filters * BASE_SIZE * BASE_SIZE)
        scales = num_scales(image_size)
        # With skip connections every scale after the first sees [x, upsampled h0]: 2n channels.
        later_in = 2 * filters if skip else filters
        self.blocks = nn.ModuleList(
            _conv_block(filters if scale == 0 else later_in, filters, repeat)
            for scale in range(scales)
        )
        self.to_rgb = nn.Conv2d(filters, 3, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h0 = self.from_hidden(h).view(-1, self.filters, BASE_SIZE, BASE_SIZE)  # (B, n, 8, 8)
        x = h0
        for scale, block in enumerate(self.blocks):
            if scale > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                if self.skip:
                    h0_up = F.interpolate(h0, size=x.shape[-2:], mode="nearest")
                    x = torch.cat([x, h0_up], dim=1)  # (B, 2n, S, S)
            x = block(x)
        return self.to_rgb(x)  # (B, 3, S, S), linear output


class Generator(nn.Module):
    """G: z ~ U(-1, 1)^h -> image in roughly [-1, 1]."""

    def __init__(
        self, image_size: int, filters: int, hidden: int, repeat: int, skip: bool = False
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.decoder = Decoder(image_size, filters, hidden, repeat, skip)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class Discriminator(nn.Module):
    """D: an autoencoder; D(v) is the reconstruction of v."""

    def __init__(
        self, image_size: int, filters: int, hidden: int, repeat: int, skip: bool = False
    ) -> None:
        super().__init__()
        self.encoder = Encoder(image_size, filters, hidden, repeat)
        self.decoder = Decoder(image_size, filters, hidden, repeat, skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def sample_z(
    batch_size: int,
    hidden: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """z ~ U(-1, 1)^h, drawn from `generator` so that runs do not share random state."""
    return uniform_to_z_(torch.rand(batch_size, hidden, generator=generator, device=device))


def uniform_to_z_(u: torch.Tensor) -> torch.Tensor:
    """U(0, 1) draws mapped in place to U(-1, 1), the distribution of z."""
    return u.mul_(2.0).sub_(1.0)
