"""`python -m began.train`: train one BEGAN run from the command line, tracked in MLflow.

    python -m began.train                                   # the CPU demo on built-in faces
    python -m began.train --data /data/lfw-deepfunneled --device cuda   # the paper's model
    python -m began.train --preset demo --data DIR          # the small demo model, real data
    python -m began.train --resume RUN_ID                   # continue a stopped run

The loop itself is `began.training.loop.train`; this module only turns options into a config
and a tracker, and the outcome into one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from began.checkpoint import load_checkpoint_or_previous
from began.cli import (
    HelpFormatter,
    Parser,
    add_config_options,
    add_system_metrics_option,
    check_name,
    fail,
    preset_chosen_by,
    preset_header,
    resume_command,
    run_cli,
    user_overrides,
)
from began.config import ConfigError, TrainConfig, config_from_options
from began.tracking import MlflowTracker, check_tracking_uri
from began.training.learner import resolve_device
from began.training.loop import TrainingDiverged, TrainingInterrupted, TrainResult, train


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m began.train",
        description="Train BEGAN on a folder of face images and record the run in MLflow. "
        "Without --data: a short CPU demo on built-in faces (--preset demo); with --data: the "
        "paper's model (--preset paper).",
        formatter_class=HelpFormatter,
    )
    add_config_options(parser)
    parser.add_argument("--experiment", default="began", help="MLflow experiment name")
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: generated)")
    parser.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )  # fmt: skip
    add_system_metrics_option(parser)
    parser.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run exactly")
    parser.add_argument("--cache-dir", default=None, help="dataset and statistics cache folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _resumed_config(args: argparse.Namespace) -> tuple[TrainConfig, MlflowTracker]:
    tracker = MlflowTracker(
        args.tracking_uri, run_id=args.resume, system_metrics=args.system_metrics == "on"
    )
    path = tracker.latest_checkpoint()
    if path is None:
        raise ConfigError(f"--resume {args.resume}: the run has no checkpoint to resume from")
    saved = load_checkpoint_or_previous(path).config
    if args.preset is not None and args.preset != saved.preset:
        # The preset chose the run's values when it started; a new label would not change them.
        raise ConfigError(
            f"--preset: run {args.resume} started from preset {saved.preset or '(not recorded)'}"
            " and keeps it; drop the option"
        )
    return replace(saved, **user_overrides(args)), tracker


def main(argv: Sequence[str] | None = None) -> TrainResult:
    args = build_parser().parse_args(argv)
    check_name("--experiment", args.experiment)
    if args.run_name is not None:
        check_name("--run-name", args.run_name)
    check_tracking_uri(args.tracking_uri)
    if args.resume:
        cfg, tracker = _resumed_config(args)
        chosen_by = f"run {args.resume}'s own"
    else:
        options = user_overrides(args)
        cfg = config_from_options(options)
        chosen_by = preset_chosen_by(options)
        if cfg.data and not Path(cfg.data).exists():  # before a run is created for it
            raise ConfigError(f"data: {cfg.data} does not exist")
        resolve_device(cfg.device)  # a GPU that is not here: now, not after the data loads
        tracker = MlflowTracker(args.tracking_uri, args.experiment, args.run_name,
                                system_metrics=args.system_metrics == "on")  # fmt: skip
    print(preset_header(cfg, chosen_by), flush=True)
    try:
        result = train(cfg, tracker, quiet=args.quiet, cache_dir=args.cache_dir)
    except TrainingInterrupted as stop:
        command = resume_command("began.train", tracker.run_id, args.tracking_uri)
        print(f"interrupted: {stop}; continue with:\n  {command}")
        raise SystemExit(130) from None
    except TrainingDiverged as error:
        fail(
            f"training diverged: {error}; run {tracker.run_id} is marked FAILED "
            "(a lower --lr or another --gamma may help)",
            code=1,
        )
    final = {"m_global_mean": result.final.m_global, **result.final.metrics}
    summary = ", ".join(f"{name}={value:.4g}" for name, value in final.items())
    if result.already_complete:
        print(
            f"run {result.run_id} is already complete at step {result.step} "
            f"(add --steps N to train it further): {summary}"
        )
    else:
        print(f"finished run {result.run_id} at step {result.step}: {summary}")
    return result


if __name__ == "__main__":
    run_cli(main)
