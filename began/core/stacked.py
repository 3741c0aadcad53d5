"""N BEGANs of one architecture as one model: weights stacked, one forward (horizontal
fusion, as HFTA, Wang et al. 2021). No I/O here.

Every weight of the N trials' G and D lives in one flat tensor, laid out parameter by
parameter, each parameter as an (N, *shape) block: trial i's copy of a parameter is one
contiguous slice, so a trial's own `nn.Module` can point its weights at it
(`began.training.pack`), and a parameter's N copies together are the weight of one
grouped operation:

- a 3x3 convolution of N trials is one convolution with groups=N: activations travel as
  (B, N*C, H, W), trial i's channels in the i-th group, and the (N, C_out, C_in, 3, 3)
  block is the grouped weight (N*C_out, C_in, 3, 3) as it lies;
- a linear layer is one batched matmul over (N, B, features);
- ELU and nearest upsampling are elementwise and run as they are.

Each trial's output depends on its own weights only, so one trial's NaN never reaches
another, and the gradient of the sum of the N losses gives each trial exactly the
gradient it has alone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from began.core.models import BASE_SIZE, Decoder, Discriminator, Encoder, Generator

Weights = dict[str, torch.Tensor]  # parameter name ("G.decoder.to_rgb.weight") -> its N copies


@dataclass(frozen=True)
class StackedWeights:
    """The views a stacked step reads its weights through, made once per pack (views made
    at every step would cost more host time than the step's arithmetic on a GPU)."""

    trainable: Weights  # of the flat weights: the gradient of the step's loss flows to them
    constant: Weights  # the same values without a gradient (D in L_G, G in the D update)
    shadow: Weights | None  # shared_fake: a copy of the weights whose gradient is kept apart


class StackedLayout:
    """Where each parameter of G and D lies in the flat tensor of N trials."""

    def __init__(
        self, G: Generator, D: Discriminator, trials: int, channels_last: bool = False
    ) -> None:
        self.trials = trials
        # NHWC activations: oneDNN's and cuDNN's faster layout, as for a single run.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # The networks' structure without their weights: the forward reads strides,
        # paddings and sizes from them, and the weights from the flat tensor.
        self.G = copy.deepcopy(G).to("meta")
        self.D = copy.deepcopy(D).to("meta")
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        self.stacked_shapes: list[tuple[int, ...]] = []  # how the forward uses each block
        for prefix, network in (("G", self.G), ("D", self.D)):
            kinds = {f"{prefix}.{name}": type(m) for name, m in network.named_modules()}
            for name, p in network.named_parameters():
                full = f"{prefix}.{name}"
                self.names.append(full)
                self.shapes.append(p.shape)
                self.stacked_shapes.append(_stacked_shape(kinds[full.rsplit(".", 1)[0]], p, trials))
        self.numels = [shape.numel() for shape in self.shapes]
        self.sizes = [trials * numel for numel in self.numels]
        self.total = sum(self.sizes)

    def weights(self, flat: torch.Tensor) -> Weights:
        """The flat tensor as the forward's weights: views, no copies."""
        parts = flat.split(self.sizes)
        return {
            name: part.view(shape)
            for name, part, shape in zip(self.names, parts, self.stacked_shapes, strict=True)
        }

    def trial_slices(self, flat: torch.Tensor, trial: int) -> Iterator[torch.Tensor]:
        """Trial `trial`'s copy of every parameter, in `names` order, as views of `flat`."""
        for part, shape in zip(flat.split(self.sizes), self.shapes, strict=True):
            yield part.view(self.trials, -1)[trial].view(shape)

    def trial_index(self, device: torch.device) -> torch.Tensor:
        """(total,) long: the trial each element of the flat tensor belongs to."""
        trials = torch.arange(self.trials, device=device)
        return torch.cat([trials.repeat_interleave(numel) for numel in self.numels])

    def generator(self, w: Weights, z: torch.Tensor) -> torch.Tensor:
        """G of N trials: (N, B, h) -> (N, B, 3, S, S)."""
        return _decode(self.G.decoder, w, "G.decoder", z, self.memory_format)

    def discriminator(self, w: Weights, x: torch.Tensor) -> torch.Tensor:
        """D of N trials: (N, B, 3, S, S) -> (N, B, 3, S, S), the reconstructions."""
        h = _encode(self.D.encoder, w, "D.encoder", x, self.memory_format)
        return _decode(self.D.decoder, w, "D.decoder", h, self.memory_format)


def _stacked_shape(kind: type, p: nn.Parameter, trials: int) -> tuple[int, ...]:
    if kind is nn.Conv2d:  # grouped: (N*C_out, C_in, kh, kw) and bias (N*C_out,)
        return (trials * p.shape[0], *p.shape[1:])
    if kind is nn.Linear:  # batched: weight (N, out, in), bias (N, 1, out)
        return (trials, *p.shape) if p.dim() == 2 else (trials, 1, p.shape[0])
    raise TypeError(f"no stacked form for a {kind.__name__} parameter")


def _to_channels(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """(N, B, C, H, W) -> (B, N*C, H, W): trial i's channels are the i-th group."""
    n, b, c, h, w = x.shape
    return x.transpose(0, 1).reshape(b, n * c, h, w).contiguous(memory_format=memory_format)


def _from_channels(x: torch.Tensor, trials: int) -> torch.Tensor:
    """(B, N*C, H, W) -> (N, B, C, H, W)."""
    b, nc, h, w = x.shape
    return x.reshape(b, trials, nc // trials, h, w).transpose(0, 1)


def _conv(conv: nn.Conv2d, w: Weights, name: str, x: torch.Tensor, trials: int) -> torch.Tensor:
    return F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], conv.stride, conv.padding,
                    groups=trials)  # fmt: skip


def _linear(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    """(N, B, in) -> (N, B, out), each trial with its own weight."""
    return torch.baddbmm(w[f"{name}.bias"], x, w[f"{name}.weight"].transpose(1, 2))


def _sequential(layers: nn.Module, w: Weights, name: str, x: torch.Tensor, trials: int):
    for child_name, layer in layers.named_children():
        if isinstance(layer, nn.Conv2d):
            x = _conv(layer, w, f"{name}.{child_name}", x, trials)
        elif isinstance(layer, nn.ELU):
            x = F.elu(x, alpha=layer.alpha, inplace=True)
        elif isinstance(layer, nn.Sequential):
            x = _sequential(layer, w, f"{name}.{child_name}", x, trials)
        else:
            raise TypeError(f"no stacked form for {type(layer).__name__}")
    return x


def _encode(
    encoder: Encoder, w: Weights, name: str, x: torch.Tensor, memory_format: torch.memory_format
) -> torch.Tensor:
    """As `Encoder.forward`, for N trials: (N, B, 3, S, S) -> (N, B, h)."""
    trials, batch = x.shape[:2]
    x = _sequential(encoder.stem, w, f"{name}.stem", _to_channels(x, memory_format), trials)
    x = _sequential(encoder.blocks, w, f"{name}.blocks", x, trials)  # (B, N*C, 8, 8)
    features = x.reshape(batch, trials, -1).transpose(0, 1)  # (N, B, C*8*8), C-major as flatten(1)
    return _linear(w, f"{name}.to_hidden", features)


def _decode(
    decoder: Decoder, w: Weights, name: str, h: torch.Tensor, memory_format: torch.memory_format
) -> torch.Tensor:
    """As `Decoder.forward`, for N trials: (N, B, h) -> (N, B, 3, S, S)."""
    trials, batch = h.shape[:2]
    n = decoder.filters
    h0 = _linear(w, f"{name}.from_hidden", h).view(trials, batch, n, BASE_SIZE, BASE_SIZE)
    h0 = _to_channels(h0, memory_format)  # (B, N*n, 8, 8)
    x = h0
    for scale, block in enumerate(decoder.blocks):
        if scale > 0:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if decoder.skip:
                size = x.shape[-1]
                h0_up = F.interpolate(h0, size=(size, size), mode="nearest")
                # Each trial's [x, h0_up] side by side: (B, N, 2n, S, S) as 2n-channel groups.
                pair = torch.cat(
                    [
                        x.view(batch, trials, n, size, size),
                        h0_up.view(batch, trials, n, size, size),
                    ],
                    dim=2,
                )
                x = pair.view(batch, trials * 2 * n, size, size)
        x = _sequential(block, w, f"{name}.blocks.{scale}", x, trials)
    return _from_channels(_conv(decoder.to_rgb, w, f"{name}.to_rgb", x, trials), trials)
