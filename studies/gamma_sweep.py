"""`python -m studies.gamma_sweep`: a BEGAN run for every gamma x seed, everything else fixed.

    python -m studies.gamma_sweep                                   # CPU demo, built-in faces
    python -m studies.gamma_sweep --data /data/lfw-deepfunneled --image-size 64 \\
        --gammas 0.3,0.4,0.5,0.6,0.7 --seeds 2 --steps 100000 --devices cuda:0,cuda:1

The same command again resumes the study: finished points are never rerun.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from began.cli import run_cli
from studies.cli import build_parser, launch, refuse_varied_options, study_spec
from studies.space import grid_points, grid_space, parse_gammas, parse_seeds
from studies.spec import GRID

DEFAULT_GAMMAS = "0.3,0.5,0.7,0.9"


def parser() -> argparse.ArgumentParser:
    p = build_parser(
        "python -m studies.gamma_sweep",
        "Train one BEGAN run per gamma x seed (a grid; each point runs once, in parallel "
        "workers), tracked in MLflow as child runs of the study's run. Without --data: a "
        "short CPU sweep on built-in faces.",
        varied=frozenset({"gamma"}),
    )
    p.add_argument("--gammas", default=DEFAULT_GAMMAS, help="comma-separated gamma values")
    p.add_argument("--seeds", default="1",
                   help="training seeds per gamma: N (0..N-1) or a list")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    space = grid_space()
    refuse_varied_options(args, space)
    grid = grid_points(parse_gammas(args.gammas), parse_seeds(args.seeds))
    spec = study_spec(args, GRID, "gamma-sweep", space, grid=tuple(grid))
    return launch(spec, args, "studies.gamma_sweep", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
