"""`python -m studies.search`: search gamma, lambda_k and conv depth (or any space) with Optuna.

    python -m studies.search --data /data/lfw-deepfunneled --n-trials 40 \\
        --objectives fid,m_global \\
        --space gamma=0.2:1.0,lambda_k=1e-4:1e-2:log,repeat=1:3,filters=32,64,128

The same command again resumes the study and runs only the trials still missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from began.cli import run_cli
from studies.cli import OptionError, build_parser, launch, refuse_varied_options, study_spec
from studies.space import SEARCHABLE, parse_space
from studies.spec import SEARCH

DEFAULT_SPACE = "gamma=0.3:0.8,lambda_k=1e-4:1e-2:log,repeat=1:2"


def parser() -> argparse.ArgumentParser:
    p = build_parser(
        "python -m studies.search",
        "Search BEGAN hyperparameters with Optuna: each trial a full training run in a "
        "worker process, tracked in MLflow as a child run of the study's run.",
        varied=frozenset(),
    )
    p.add_argument(
        "--space",
        default=DEFAULT_SPACE,
        help="NAME=LOW:HIGH[:log|:STEP] or NAME=A,B,C items, comma-separated; "
        f"searchable: {', '.join(sorted(SEARCHABLE))}",
    )
    p.add_argument(
        "--n-trials",
        type=int,
        default=20,
        help="trials in all (over every worker, machine and rerun)",
    )
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds after which no new trial starts (running ones end)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    space = parse_space(args.space)
    refuse_varied_options(args, space)
    if args.n_trials < 1:
        raise OptionError(f"--n-trials: must be >= 1, got {args.n_trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise OptionError(f"--timeout: must be > 0 seconds, got {args.timeout}")
    spec = study_spec(args, SEARCH, "search", space, n_trials=args.n_trials, timeout_s=args.timeout)
    return launch(spec, args, "studies.search", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
