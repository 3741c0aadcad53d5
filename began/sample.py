"""Draw samples from a trained generator: `python -m began.sample --run RUN_ID --out grid.png`.

The generator comes from the run's last checkpoint (or a checkpoint file), read
with weights only, or from a logged or registered model (`--model
models:/NAME/latest`, as `--register-best NAME` on a study registers its best).
`--interpolate` draws walks between random pairs of z instead:
one row per walk, linear or spherical (slerp, which keeps |z| typical of the
uniform prior's shell).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from began.checkpoint import load_checkpoint
from began.cli import Parser, fail, run_cli
from began.core.models import Generator, sample_z
from began.training.images import VIEW_WIDTH, image_grid, save_png, viewable
from began.training.learner import load_networks, resolve_device


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line from a (N, h) to b (N, h) at fractions t (T,) -> (N, T, h)."""
    t = t.view(1, -1, 1)
    return a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Great-circle walk from a to b (N, h) at fractions t (T,) -> (N, T, h)."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1).clamp(-1.0, 1.0)  # (N,)
    omega = torch.arccos(cos).view(-1, 1, 1)
    sin = torch.sin(omega)
    t = t.view(1, -1, 1)
    walk = torch.sin((1 - t) * omega) * a.unsqueeze(1) + torch.sin(t * omega) * b.unsqueeze(1)
    # Nearly parallel endpoints: the great circle is the straight line.
    return torch.where(sin.abs() < 1e-6, lerp(a, b, t.view(-1)), walk / sin.clamp_min(1e-6))


@torch.no_grad()
def sample_grid(
    G: Generator,
    num: int,
    seed: int,
    interpolate: str | None = None,
    walk_length: int = 8,
) -> torch.Tensor:
    """`num` new images (N, 3, S, S), or with `interpolate` num // walk_length walks."""
    rng = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    if interpolate is None:
        return G(sample_z(num, G.hidden, rng).to(device))
    walks = max(num // walk_length, 1)
    a, b = sample_z(walks, G.hidden, rng), sample_z(walks, G.hidden, rng)
    t = torch.linspace(0.0, 1.0, walk_length)
    z = (slerp if interpolate == "slerp" else lerp)(a, b, t)  # (walks, T, h)
    return G(z.reshape(-1, G.hidden).to(device))


class LoadedGenerator(nn.Module):
    """A generator loaded from MLflow (an exported graph) with the z size it takes."""

    def __init__(self, network: nn.Module, hidden: int) -> None:
        super().__init__()
        self.network, self.hidden = network, hidden

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.network(z)


def load_generator_from(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The generator `--run`, `--checkpoint` or `--model` names, on `device`."""
    if args.checkpoint:
        return load_networks(load_checkpoint(args.checkpoint), device)[0]
    from began.tracking import MlflowTracker, check_tracking_uri, load_generator

    check_tracking_uri(args.tracking_uri)
    if args.model:
        network, hidden = load_generator(args.tracking_uri, args.model)
        return LoadedGenerator(network, hidden).to(device)
    tracker = MlflowTracker(args.tracking_uri, run_id=args.run, run_option="--run")
    path = tracker.latest_checkpoint()
    if path is None:
        fail(f"--run {args.run}: the run has no checkpoint")
    return load_networks(load_checkpoint(path), device)[0]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m began.sample",
        description="Write a grid of samples (or latent walks) from a trained generator.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_ID", help="MLflow run whose last checkpoint to use")
    source.add_argument("--checkpoint", type=Path, help="a checkpoint file (last.pt)")
    source.add_argument(
        "--model", metavar="URI",
        help="a registered generator (models:/NAME/latest, models:/NAME/2) or a logged one "
        "(models:/MODEL_ID)",
    )  # fmt: skip
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI for --run and --model"
    )
    parser.add_argument("--num", type=int, default=64, help="images in the grid")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG to write")
    parser.add_argument(
        "--interpolate", nargs="?", const="linear", choices=("linear", "slerp"), default=None,
        help="walks between random z instead of independent samples (linear or slerp)",
    )  # fmt: skip
    parser.add_argument("--walk-length", type=int, default=8, help="images per walk (a row)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the z drawn")
    parser.add_argument(
        "--width", type=int, default=VIEW_WIDTH,
        help="upscale the grid to about this many pixels (nearest neighbour, as the grids "
        "logged in MLflow); 0: one pixel per image pixel",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.num < 1:
        fail(f"--num: must be >= 1, got {args.num}")
    if args.walk_length < 2:
        fail(f"--walk-length: must be >= 2, got {args.walk_length}")
    if args.width < 0:
        fail(f"--width: must be >= 0, got {args.width}")
    device = resolve_device(args.device)  # a wrong --device fails before any loading
    G = load_generator_from(args, device)
    images = sample_grid(G, args.num, args.seed, args.interpolate, args.walk_length)
    columns = args.walk_length if args.interpolate else math.ceil(math.sqrt(len(images)))
    picture = image_grid(images, columns=columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(viewable(picture, args.width) if args.width else picture, args.out)
    print(f"wrote {len(images)} images to {args.out}")
    return args.out


if __name__ == "__main__":
    run_cli(main)
