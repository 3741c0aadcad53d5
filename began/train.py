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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from began.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint_or_previous,
    save_checkpoint,
)
from began.cli import (
    HelpFormatter,
    Parser,
    add_config_options,
    check_name,
    fail,
    resume_command,
    run_cli,
    user_overrides,
)
from began.config import DEMO_OVERRIDES, ConfigError, TrainConfig
from began.data import BatchSampler, ImageSet, load_images, split_holdout
from began.data.sampler import holdout_count
from began.evaluate import quality_metrics
from began.images import image_grid, reconstruction_grid, viewable
from began.interrupts import StopFlag, deferred_interrupts
from began.metrics import get_metric, inception, parse_metrics
from began.provenance import device_name, git_commit, package_versions
from began.run import Run, build_run, resolve_device, restore, snapshot
from began.step import STEP_METRICS, train_step
from began.tracking import (
    FAILED,
    FINISHED,
    KILLED,
    MlflowTracker,
    Tracker,
    check_tracking_uri,
)

RECONSTRUCTION_GRID_IMAGES = 32


@dataclass(frozen=True)
class EvalReport:
    """What `should_stop` sees at each evaluation point."""

    step: int
    m_global: float  # mean M_global over the steps since the previous evaluation
    metrics: dict[str, float] = field(default_factory=dict)  # quality metrics by logged name

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "m_global": self.m_global, "metrics": dict(self.metrics)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalReport:
        return cls(int(values["step"]), float(values["m_global"]), dict(values["metrics"]))


# should_stop returns None/False to go on, or a reason (a string; True means "no reason given").
StopDecision = str | bool | None
STOPPED = "STOPPED"  # TrainResult.status of a run that should_stop ended early


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    step: int  # steps completed
    status: str  # FINISHED (reached cfg.steps) or STOPPED (should_stop gave a reason)
    final: EvalReport  # the last evaluation
    stop_reason: str | None = None
    already_complete: bool = False  # the run had reached cfg.steps before this call

    @property
    def stopped_early(self) -> bool:
        return self.status == STOPPED


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run marked KILLED."""


class TrainingDiverged(RuntimeError):
    """M_global or the weights became NaN or infinite; the run is marked FAILED."""


def train(
    cfg: TrainConfig,
    tracker: Tracker,
    should_stop: Callable[[EvalReport], StopDecision] | None = None,
    *,
    quiet: bool = True,
    cache_dir: str | None = None,
    log_models_when_stopped: bool = True,
) -> TrainResult:
    """Train one run to cfg.steps, resuming from the tracker's checkpoint when it has one.

    The run exists in the tracker (tracker.run_id) before the data loads. A run whose
    checkpoint already reached cfg.steps is not trained or logged again: the result
    carries its final evaluation and `already_complete`.
    """
    existed = bool(tracker.run_id)
    tracker.create()
    started = False
    loop: _Loop | None = None
    with deferred_interrupts() as stop_flag:
        try:
            device = resolve_device(cfg.device)
            dataset = load_images(
                cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale,
                cache_dir=cache_dir, progress=not quiet,
            )  # fmt: skip
            train_images, heldout_images = split_holdout(dataset.images, cfg.holdout)
            run = build_run(cfg, device)
            checkpoint = _checkpoint_to_resume(tracker, dataset)
            if checkpoint is not None and checkpoint.step >= cfg.steps:
                return _complete_result(tracker.run_id, checkpoint)
            if checkpoint is not None:
                restore(run, checkpoint)
            sampler = BatchSampler(
                torch.from_numpy(train_images).to(device), cfg.batch_size, cfg.seed
            )
            loop = _Loop(run, tracker, dataset, heldout_images, should_stop, quiet, cache_dir)
            loop.log_models_when_stopped = log_models_when_stopped
            if checkpoint is not None:
                loop.restore_window(checkpoint)
            tracker.start(cfg, _run_tags(cfg, dataset, device), resumed=checkpoint is not None)
            started = True
            if not quiet:
                tqdm.write(f"run {tracker.run_id}: {dataset.kept} images, device {device}")
            return loop.execute(sampler, stop_flag)
        except TrainingInterrupted:
            raise  # already checkpointed and marked KILLED
        except KeyboardInterrupt:
            _finish_quietly(tracker, KILLED, "interrupted twice: stopped without a checkpoint")
            raise
        except BaseException as error:
            # A resumed run that failed before it started (bad --data, say) keeps its status.
            if started or not existed:
                _finish_quietly(tracker, FAILED, f"{type(error).__name__}: {error}")
            raise
        finally:
            if loop is not None:
                loop.close()


def _checkpoint_to_resume(tracker: Tracker, dataset: ImageSet) -> Checkpoint | None:
    path = tracker.latest_checkpoint()
    if path is None:
        return None
    checkpoint = load_checkpoint_or_previous(path)
    if checkpoint.dataset_fingerprint != dataset.fingerprint:
        raise ConfigError(
            f"data: {checkpoint.config.data or 'built-in'} is not the dataset this run was "
            f"trained on (fingerprint {dataset.fingerprint}, "
            f"checkpoint has {checkpoint.dataset_fingerprint})"
        )
    return checkpoint


def _complete_result(run_id: str, checkpoint: Checkpoint) -> TrainResult:
    """A run that already reached its last step: report it, change nothing."""
    final = (
        EvalReport.from_dict(checkpoint.last_eval)
        if checkpoint.last_eval is not None
        else EvalReport(checkpoint.step, math.nan)  # written before evaluations were kept
    )
    return TrainResult(run_id, checkpoint.step, FINISHED, final, already_complete=True)


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
        "holdout_images": str(holdout_count(cfg.holdout, dataset.kept)),
    }
    if any(get_metric(r.name).uses_feature_network for r in parse_metrics(cfg.metrics)):
        # FID/KID are comparable only between runs that used the same feature network.
        network = inception.resolve_network_path(cfg.feature_network or None)
        tags["feature_network"] = inception.network_identity(network)
    if not cfg.data:
        tags["dataset_note"] = BUILTIN_NOTE
    return tags


BUILTIN_NOTE = (
    "built-in demo: the 100 faces of skimage.data.lfw_subset(), 25x25 grayscale, "
    "upscaled and kept despite being grayscale"
)


class _Loop:
    """The training loop and the bookkeeping around it (logs, grids, checkpoints, evals)."""

    def __init__(
        self,
        run: Run,
        tracker: Tracker,
        dataset: ImageSet,
        heldout: np.ndarray,
        should_stop: Callable[[EvalReport], StopDecision] | None,
        quiet: bool,
        cache_dir: str | None,
    ) -> None:
        self.run, self.cfg, self.tracker = run, run.cfg, tracker
        self.dataset = dataset
        self.heldout_array = heldout
        self.heldout = torch.from_numpy(heldout)
        self.cache_dir = cache_dir
        self.should_stop = should_stop
        self.log_models_when_stopped = True
        self.requests = parse_metrics(self.cfg.metrics)
        self.eval_sum = torch.zeros((), device=run.device)  # M_global summed since the last eval
        self.eval_count = 0
        # M_global summed since the last checkpoint: NaN here means "do not save".
        self.health_sum = torch.zeros((), device=run.device)
        self.last_eval: EvalReport | None = None
        self.progress = tqdm(
            total=self.cfg.steps, initial=run.state.step, disable=quiet, unit="step",
            dynamic_ncols=True, smoothing=0.05,
        )  # fmt: skip
        self.log_clock = (0.0, run.state.step)  # set when the loop starts

    def restore_window(self, checkpoint: Checkpoint) -> None:
        """Continue the evaluation window where the checkpoint left it."""
        self.eval_sum.fill_(checkpoint.eval_sum)
        self.eval_count = checkpoint.eval_count
        if checkpoint.last_eval is not None:
            self.last_eval = EvalReport.from_dict(checkpoint.last_eval)

    def execute(self, sampler: BatchSampler, stop_flag: StopFlag) -> TrainResult:
        run, cfg = self.run, self.cfg
        self.log_clock = (time.perf_counter(), run.state.step)
        stop_reason: str | None = None
        while run.state.step < cfg.steps and stop_reason is None:
            if stop_flag:
                self._save_checkpoint()
                self.tracker.finish(KILLED, error=f"stopped by {stop_flag.signal_name}")
                raise TrainingInterrupted(
                    f"stopped at step {run.state.step}; run {self.tracker.run_id} resumable"
                )
            self._one_step(sampler)
            step = run.state.step
            if step == cfg.steps:
                break  # the final record below evaluates, saves and logs this step
            if step % cfg.checkpoint_every == 0:
                self._save_checkpoint()
            if step % cfg.sample_every == 0:
                self._log_grids()
            if cfg.eval_every and step % cfg.eval_every == 0:
                stop_reason = self._evaluate()
        self._finish_record(log_models=stop_reason is None or self.log_models_when_stopped)
        if stop_reason is not None:
            self.tracker.set_tags({"stop_reason": stop_reason})
        self.tracker.finish(FINISHED)
        assert self.last_eval is not None
        status = FINISHED if stop_reason is None else STOPPED
        return TrainResult(self.tracker.run_id, run.state.step, status, self.last_eval, stop_reason)

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
        self.health_sum += metrics["m_global"]
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
        # The postfix first: update() redraws, and must show this step's values.
        self.progress.set_postfix(
            m_global=f"{logged['m_global']:.4f}", k=f"{logged['k']:.4f}",
            img_s=f"{logged['images_per_s']:.0f}", refresh=False,
        )  # fmt: skip
        self.progress.update(step - self.progress.n)

    @torch.no_grad()
    def _log_grids(self) -> None:
        run, step = self.run, self.run.state.step
        self.tracker.log_image("samples", viewable(image_grid(run.G(run.fixed_z))), step)
        real = self.heldout if len(self.heldout) else torch.from_numpy(self.dataset.images)
        real = real[:RECONSTRUCTION_GRID_IMAGES].to(run.device).float() / 127.5 - 1.0
        grid = reconstruction_grid(real, run.D(real))
        self.tracker.log_image("reconstructions", viewable(grid), step)

    def _save_checkpoint(self) -> None:
        """Write the checkpoint, unless a step since the last one went NaN: a diverged
        run must never overwrite its last good state."""
        run = self.run
        finite = [self.health_sum.isfinite()]
        finite += [p.isfinite().all() for p in (*run.G.parameters(), *run.D.parameters())]
        if not bool(torch.stack(finite).all()):  # one host sync per checkpoint
            raise TrainingDiverged(
                f"M_global or the weights are not finite at step {run.state.step}; "
                "the last good checkpoint was kept"
            )
        self.health_sum.zero_()
        path = self.tracker.checkpoint_dir() / CHECKPOINT_NAME
        last_eval = self.last_eval.to_dict() if self.last_eval is not None else None
        state = snapshot(
            run, self.dataset.fingerprint, self.eval_sum.item(), self.eval_count, last_eval
        )
        save_checkpoint(path, state)
        self.tracker.checkpoint_saved(path)

    def _evaluate(self) -> str | None:
        """Quality metrics and mean M_global now; the reason when should_stop asks to stop."""
        run, step = self.run, self.run.state.step
        m_global = self.eval_sum.item() / self.eval_count if self.eval_count else math.nan
        self.eval_sum.zero_()
        self.eval_count = 0
        quality = quality_metrics(
            run.G, run.D, self.cfg, self.requests, self.dataset, self.heldout_array,
            run.device, self.cache_dir,
        )  # fmt: skip
        self.tracker.log_metrics({"m_global_mean": m_global, **quality}, step)
        self.last_eval = EvalReport(step, m_global, quality)
        decision = self.should_stop(self.last_eval) if self.should_stop else None
        if decision is True:
            return "should_stop asked to stop"
        return decision or None

    def _finish_record(self, log_models: bool) -> None:
        """At the end: grids and evaluation at the final step, the checkpoint holding
        that evaluation (a finished run reports it when resumed), then the models."""
        step = self.run.state.step
        self._log_grids()
        if self.last_eval is None or self.last_eval.step != step:
            self._evaluate()
        self._save_checkpoint()
        if log_models:
            self.tracker.log_models(self.run.G, self.run.D, self.cfg)

    def close(self) -> None:
        self.progress.close()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m began.train",
        description="Train BEGAN on a folder of face images and record the run in MLflow. "
        "Without --data: a short CPU demo on built-in faces (demo values shown as defaults).",
        formatter_class=HelpFormatter,
    )
    add_config_options(parser, shown_defaults=DEMO_OVERRIDES)
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
    check_name("--experiment", args.experiment)
    if args.run_name is not None:
        check_name("--run-name", args.run_name)
    check_tracking_uri(args.tracking_uri)
    if args.resume:
        tracker = MlflowTracker(args.tracking_uri, run_id=args.resume)
        path = tracker.latest_checkpoint()
        if path is None:
            raise ConfigError(f"--resume {args.resume}: the run has no checkpoint to resume from")
        cfg = replace(load_checkpoint_or_previous(path).config, **user_overrides(args))
    else:
        cfg = config_for(args)
        if cfg.data and not Path(cfg.data).exists():  # before a run is created for it
            raise ConfigError(f"data: {cfg.data} does not exist")
        resolve_device(cfg.device)  # a GPU that is not here: now, not after the data loads
        tracker = MlflowTracker(args.tracking_uri, args.experiment, args.run_name)
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
