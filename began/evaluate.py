"""`python -m began.evaluate --run RUN_ID --metrics fid_5k,...`: score a run afterwards.

Scores the run's last checkpoint and logs the values into the same run, at the
checkpoint's step, beside (not over) its training history. The scoring itself is
`began.metrics.scoring.score`, which the training loop calls at its evaluations.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace

from began.checkpoint import load_checkpoint
from began.cli import Parser, fail, run_cli
from began.config import ConfigError
from began.data import load_images, split_holdout
from began.metrics import MetricRequest, parse_metrics
from began.metrics.scoring import score
from began.training.learner import load_networks, resolve_device


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m began.evaluate",
        description="Score a run's generator after training and log the values to the run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run", metavar="RUN_ID", required=True, help="MLflow run to evaluate")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    parser.add_argument(
        "--metrics", default="fid,kid,diversity,recon,sharpness",
        help="metrics to compute, each NAME or NAME_COUNT (fid_5k)",
    )  # fmt: skip
    parser.add_argument(
        "--num-samples", type=int, default=None,
        help="samples for every metric given without a count (default: each metric's own)",
    )  # fmt: skip
    parser.add_argument("--data", default=None, help="dataset path, if it moved since training")
    parser.add_argument(
        "--feature-network", default=None,
        help="TorchScript feature network for FID/KID (default: the one the run used)",
    )  # fmt: skip
    parser.add_argument(
        "--reference-size", type=int, default=None,
        help="real images in the reference features, at most (default: the run's)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--cache-dir", default=None, help="dataset and statistics cache folder")
    return parser


def _requests(spec: str, num_samples: int | None) -> list[MetricRequest]:
    if num_samples is not None:
        if num_samples < 2:
            fail(f"--num-samples: must be >= 2, got {num_samples}")
        spec = ",".join(
            item if any(c.isdigit() for c in item) else f"{item}_{num_samples}"
            for item in (part.strip() for part in spec.split(","))
            if item
        )
    try:
        return parse_metrics(spec)
    except ValueError as error:  # the registry's message already starts with "metrics:"
        raise ConfigError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    from began.tracking import MlflowTracker, check_tracking_uri

    args = build_parser().parse_args(argv)
    requests = _requests(args.metrics, args.num_samples)
    if args.reference_size is not None and args.reference_size < 2:
        fail(f"--reference-size: must be >= 2, got {args.reference_size}")
    device = resolve_device(args.device)  # a wrong --device fails before any loading
    check_tracking_uri(args.tracking_uri)
    tracker = MlflowTracker(args.tracking_uri, run_id=args.run, run_option="--run")
    path = tracker.latest_checkpoint()
    if path is None:
        fail(f"--run {args.run}: the run has no checkpoint to evaluate")
    checkpoint = load_checkpoint(path)
    cfg = checkpoint.config
    if args.data is not None:
        cfg = replace(cfg, data=args.data)
    if args.feature_network is not None:
        cfg = replace(cfg, feature_network=args.feature_network)
    if args.reference_size is not None:
        cfg = replace(cfg, reference_size=args.reference_size)
    dataset = load_images(cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale, args.cache_dir)
    if dataset.fingerprint != checkpoint.dataset_fingerprint:
        fail(f"--data {cfg.data or 'built-in'}: not the dataset run {args.run} was trained on")
    _, heldout = split_holdout(dataset.images, cfg.holdout)
    G, D = load_networks(checkpoint, device)
    values = score(G, D, cfg, requests, dataset, heldout, device, args.cache_dir)
    tracker.log_metrics(values, checkpoint.step)
    tracker.log_text(json.dumps(values, indent=2), f"evaluations/step_{checkpoint.step}.json")
    tracker.close()
    for name, value in values.items():
        print(f"{name}\t{value:.6g}")
    return values


if __name__ == "__main__":
    run_cli(main)
