"""The BEGAN training loop, `train(cfg, tracker, should_stop)`, and `python -m began.train`.

The loop is one function. It calls `train_step` for the math, a `Tracker` for
the record and `should_stop` at each evaluation (pruning, Ctrl-C handling in a
study). Per-step values stay on the device and are read back once per
`log_every` steps, so logging never stalls the GPU.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from began.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from began.cli import add_config_options, run_cli, user_overrides
from began.config import DEMO_OVERRIDES, ConfigError, TrainConfig
from began.data import BatchSampler, ImageSet, load_images, split_holdout
from began.evaluate import quality_metrics
from began.images import image_grid, reconstruction_grid
from began.interrupts import StopFlag, deferred_interrupts
from began.metrics import get_metric, inception, parse_metrics
from began.provenance import device_name, git_commit, package_versions
from began.run import Run, build_run, resolve_device, restore, snapshot
from began.step import STEP_METRICS, train_step
from began.tracking import FAILED, FINISHED, KILLED, MlflowTracker, Tracker

RECONSTRUCTION_GRID_IMAGES = 32


@dataclass(frozen=True)
class EvalReport:
    """What `should_stop` sees at each evaluation point."""

    step: int
    m_global: float  # mean M_global over the steps since the previous evaluation
    metrics: dict[str, float] = field(default_factory=dict)  # quality metrics by logged name


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    step: int  # steps completed
    status: str  # FINISHED or KILLED
    stopped_early: bool  # should_stop asked to stop
    final: EvalReport  # the last evaluation


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run marked KILLED."""


class TrainingDiverged(RuntimeError):
    """M_global became NaN or infinite; the run is marked FAILED."""


def train(
    cfg: TrainConfig,
    tracker: Tracker,
    should_stop: Callable[[EvalReport], bool] | None = None,
    *,
    quiet: bool = True,
    cache_dir: str | None = None,
) -> TrainResult:
    """Train one run to cfg.steps, resuming from the tracker's checkpoint when it has one."""
    device = resolve_device(cfg.device)
    dataset = load_images(
        cfg.data,
        cfg.image_size,
        cfg.crop,
        cfg.keep_grayscale,
        cache_dir=cache_dir,
        progress=not quiet,
    )
    train_images, heldout_images = split_holdout(dataset.images, cfg.holdout)
    run = build_run(cfg, device)
    checkpoint_path = tracker.latest_checkpoint()
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        if checkpoint.dataset_fingerprint != dataset.fingerprint:
            raise ConfigError(
                f"data: {cfg.data or 'built-in'} is not the dataset this run was trained on "
                f"(fingerprint {dataset.fingerprint}, "
                f"checkpoint has {checkpoint.dataset_fingerprint})"
            )
        restore(run, checkpoint)
    sampler = BatchSampler(torch.from_numpy(train_images).to(device), cfg.batch_size, cfg.seed)
    loop = _Loop(run, tracker, dataset, heldout_images, should_stop, quiet, cache_dir)
    tracker.start(cfg, _run_tags(cfg, dataset, device), resumed=checkpoint_path is not None)
    if not quiet:
        tqdm.write(f"run {tracker.run_id}: {dataset.kept} images, device {device}")
    with deferred_interrupts() as stop_flag:
        try:
            return loop.execute(sampler, stop_flag)
        except TrainingInterrupted:
            raise  # already checkpointed and marked KILLED
        except KeyboardInterrupt:
            _finish_quietly(tracker, KILLED, "interrupted twice: stopped without a checkpoint")
            raise
        except BaseException as error:
            _finish_quietly(tracker, FAILED, f"{type(error).__name__}: {error}")
            raise
        finally:
            loop.close()


def _finish_quietly(tracker: Tracker, status: str, error: str) -> None:
    """Record how the run ended without hiding why it ended, even if the store is down."""
    try:
        tracker.finish(status, error=error)
    except Exception as tracking_error:
        warnings.warn(f"could not mark the run {status}: {tracking_error}", stacklevel=2)


def _run_tags(cfg: TrainConfig, dataset: ImageSet, device: torch.device) -> dict[str, str]:
    tags = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "dataset_path": dataset.source,
        "dataset_images": str(dataset.kept),
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_skipped_grayscale": str(dataset.skipped_grayscale),
        "dataset_skipped_unreadable": str(dataset.skipped_unreadable),
        "dataset_grayscale_kept": str(dataset.grayscale_kept).lower(),
    }
    if any(get_metric(r.name).uses_feature_network for r in parse_metrics(cfg.metrics)):
        # FID/KID are comparable only between runs that used the same feature network.
        network = inception.resolve_network_path(cfg.feature_network or None)
        tags["feature_network"] = inception.network_identity(network)
    if not cfg.data:
        tags["dataset_note"] = (
            "built-in demo: the 100 faces of skimage.data.lfw_subset(), 25x25 grayscale, "
            "upscaled and kept despite being grayscale"
        )
    return tags


class _Loop:
    """The training loop and the bookkeeping around it (logs, grids, checkpoints, evals)."""

    def __init__(
        self,
        run: Run,
        tracker: Tracker,
        dataset: ImageSet,
        heldout: np.ndarray,
        should_stop: Callable[[EvalReport], bool] | None,
        quiet: bool,
        cache_dir: str | None,
    ) -> None:
        self.run, self.cfg, self.tracker = run, run.cfg, tracker
        self.dataset = dataset
        self.heldout_array = heldout
        self.heldout = torch.from_numpy(heldout)
        self.cache_dir = cache_dir
        self.should_stop = should_stop
        self.requests = parse_metrics(self.cfg.metrics)
        self.eval_sum = torch.zeros((), device=run.device)  # M_global summed since the last eval
        self.eval_count = 0
        self.last_eval: EvalReport | None = None
        self.progress = tqdm(
            total=self.cfg.steps, initial=run.state.step, disable=quiet, unit="step",
            dynamic_ncols=True, smoothing=0.05,
        )  # fmt: skip
        self.log_clock = (0.0, run.state.step)  # set when the loop starts

    def execute(self, sampler: BatchSampler, stop_flag: StopFlag) -> TrainResult:
        run, cfg = self.run, self.cfg
        self.log_clock = (time.perf_counter(), run.state.step)
        stopped_early = False
        while run.state.step < cfg.steps and not stopped_early:
            if stop_flag:
                self._save_checkpoint()
                self.tracker.finish(KILLED, error=f"stopped by {stop_flag.signal_name}")
                raise TrainingInterrupted(
                    f"stopped at step {run.state.step}; run {self.tracker.run_id} resumable"
                )
            self._one_step(sampler)
            step = run.state.step
            if step % cfg.checkpoint_every == 0:
                self._save_checkpoint()
            if step % cfg.sample_every == 0:
                self._log_grids()
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                stopped_early = self._evaluate()
        self._finish_record()
        self.tracker.finish(FINISHED)
        assert self.last_eval is not None
        return TrainResult(
            self.tracker.run_id, run.state.step, FINISHED, stopped_early, self.last_eval
        )

    def _one_step(self, sampler: BatchSampler) -> None:
        run, cfg = self.run, self.cfg
        x = sampler.batch(run.state.step)  # (B, 3, S, S) in [-1, 1]
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z_D, z_G = run.sample_noise()
        lr = run.schedule.lr
        run.state, metrics = train_step(
            run.G_forward, run.D_forward, run.opt_G, run.opt_D, x, z_D, z_G, run.state, cfg
        )
        if run.schedule.observe(metrics["m_global"]):
            run.schedule.apply(run.opt_G, run.opt_D)
        self.eval_sum += metrics["m_global"]
        self.eval_count += 1
        if run.state.step % cfg.log_every == 0:
            self._log_metrics(metrics, lr)

    def _log_metrics(self, metrics: dict[str, torch.Tensor], lr: float) -> None:
        step = self.run.state.step
        values = torch.stack([metrics[name].float() for name in STEP_METRICS]).tolist()  # one sync
        logged = dict(zip(STEP_METRICS, values, strict=True))
        if not math.isfinite(logged["m_global"]):
            raise TrainingDiverged(f"M_global is {logged['m_global']} at step {step}")
        now = time.perf_counter()
        then, then_step = self.log_clock
        logged["lr"] = lr
        logged["images_per_s"] = (step - then_step) * self.cfg.batch_size / max(now - then, 1e-9)
        self.log_clock = (now, step)
        self.tracker.log_metrics(logged, step)
        self.progress.update(step - self.progress.n)
        self.progress.set_postfix(
            m_global=f"{logged['m_global']:.4f}", k=f"{logged['k']:.4f}",
            img_s=f"{logged['images_per_s']:.0f}", refresh=False,
        )  # fmt: skip

    @torch.no_grad()
    def _log_grids(self) -> None:
        run, step = self.run, self.run.state.step
        self.tracker.log_image("samples", image_grid(run.G(run.fixed_z)), step)
        real = self.heldout if len(self.heldout) else torch.from_numpy(self.dataset.images)
        real = real[:RECONSTRUCTION_GRID_IMAGES].to(run.device).float() / 127.5 - 1.0
        self.tracker.log_image("reconstructions", reconstruction_grid(real, run.D(real)), step)

    def _save_checkpoint(self) -> None:
        path = self.tracker.checkpoint_dir() / CHECKPOINT_NAME
        save_checkpoint(path, snapshot(self.run, self.dataset.fingerprint))
        self.tracker.checkpoint_saved(path)

    def _evaluate(self) -> bool:
        """Quality metrics and mean M_global now; True when should_stop asks to stop."""
        run, step = self.run, self.run.state.step
        m_global = self.eval_sum.item() / max(self.eval_count, 1)
        self.eval_sum.zero_()
        self.eval_count = 0
        quality = quality_metrics(
            run.G, run.D, self.cfg, self.requests, self.dataset, self.heldout_array,
            run.device, self.cache_dir,
        )  # fmt: skip
        self.tracker.log_metrics({"m_global_mean": m_global, **quality}, step)
        self.last_eval = EvalReport(step, m_global, quality)
        return bool(self.should_stop and self.should_stop(self.last_eval))

    def _finish_record(self) -> None:
        """At the end: checkpoint, grids and evaluation at the final step, then the models."""
        step = self.run.state.step
        if step % self.cfg.checkpoint_every:
            self._save_checkpoint()
        if step % self.cfg.sample_every:
            self._log_grids()
        if self.last_eval is None or self.last_eval.step != step:
            self._evaluate()
        self.tracker.log_models(self.run.G, self.run.D, self.cfg)

    def close(self) -> None:
        self.progress.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m began.train",
        description="Train BEGAN on a folder of face images and record the run in MLflow. "
        "Without --data: a short CPU demo on built-in faces (demo values shown as defaults).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_options(parser, shown_defaults={})
    parser.add_argument("--experiment", default="began", help="MLflow experiment name")
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: generated)")
    parser.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )  # fmt: skip
    parser.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run exactly")
    parser.add_argument("--cache-dir", default=None, help="dataset and statistics cache folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def config_for(args: argparse.Namespace) -> TrainConfig:
    """Paper defaults with --data; the CPU demo's values for what the user left unset without."""
    overrides = user_overrides(args)
    base = TrainConfig() if overrides.get("data") else TrainConfig(**DEMO_OVERRIDES)
    return replace(base, **overrides)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    args = build_parser().parse_args(argv)
    if args.resume:
        tracker = MlflowTracker(args.tracking_uri, run_id=args.resume)
        path = tracker.latest_checkpoint()
        if path is None:
            raise ConfigError(f"--resume {args.resume}: the run has no checkpoint to resume from")
        cfg = replace(load_checkpoint(path).config, **user_overrides(args))
    else:
        cfg = config_for(args)
        tracker = MlflowTracker(args.tracking_uri, args.experiment, args.run_name)
    try:
        result = train(cfg, tracker, quiet=args.quiet, cache_dir=args.cache_dir)
    except TrainingInterrupted as stop:
        print(f"interrupted: {stop}; continue with --resume {tracker.run_id}")
        raise SystemExit(130) from None
    final = {"m_global_mean": result.final.m_global, **result.final.metrics}
    summary = ", ".join(f"{name}={value:.4g}" for name, value in final.items())
    print(f"finished run {result.run_id} at step {result.step}: {summary}")
    return result


if __name__ == "__main__":
    run_cli(main)
