"""The BEGAN training loop: `train(cfg, tracker, should_stop)`.

One function from a config to a finished run. It builds a `Learner` (the networks,
optimizers and state), resumes it from the tracker's checkpoint when there is one,
and then alternates `step_once` (the math: `began.step.train_step`) with the run's
`RunRecorder` (logs, grids, evaluations, checkpoints). `should_stop` sees every
evaluation; pruning and a study's bookkeeping plug in there. Ctrl-C and SIGTERM stop
between steps, with a checkpoint.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from tqdm import tqdm

from began.checkpoint import Checkpoint, load_checkpoint_or_previous
from began.config import ConfigError, TrainConfig
from began.data import BatchSampler, ImageSet, load_images, split_holdout
from began.interrupts import StopFlag, deferred_interrupts
from began.learner import Learner, build_learner, resolve_device, restore
from began.provenance import run_tags
from began.recorder import (
    STOPPED,
    EvalReport,
    RunRecorder,
    StopDecision,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
)
from began.step import train_step
from began.tracking import FAILED, FINISHED, KILLED, Tracker

__all__ = [
    "STOPPED",
    "EvalReport",
    "StopDecision",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "step_once",
    "train",
]


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
    recorder: RunRecorder | None = None
    with deferred_interrupts() as stop_flag:
        try:
            device = resolve_device(cfg.device)
            dataset = load_images(
                cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale,
                cache_dir=cache_dir, progress=not quiet,
            )  # fmt: skip
            train_images, heldout_images = split_holdout(dataset.images, cfg.holdout)
            learner = build_learner(cfg, device)
            checkpoint = _checkpoint_to_resume(tracker, dataset)
            if checkpoint is not None and checkpoint.step >= cfg.steps:
                return _complete_result(tracker.run_id, checkpoint)
            if checkpoint is not None:
                restore(learner, checkpoint)
            sampler = BatchSampler(
                torch.from_numpy(train_images).to(device), cfg.batch_size, cfg.seed
            )
            recorder = RunRecorder(
                learner, tracker, dataset, heldout_images, should_stop, quiet=quiet,
                cache_dir=cache_dir, log_models_when_stopped=log_models_when_stopped,
            )  # fmt: skip
            if checkpoint is not None:
                recorder.resume_from(checkpoint)
            tracker.start(cfg, run_tags(cfg, dataset, device), resumed=checkpoint is not None)
            started = True
            if not quiet:
                tqdm.write(f"run {tracker.run_id}: {dataset.kept} images, device {device}")
            return _run_to_the_end(learner, sampler, recorder, stop_flag)
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
            if recorder is not None:
                recorder.close()


def step_once(learner: Learner, sampler: BatchSampler) -> tuple[dict[str, torch.Tensor], float]:
    """One training step on the learner's next batch: the step's metrics and its lr."""
    cfg = learner.cfg
    x = sampler.batch(learner.state.step)  # (B, 3, S, S) in [-1, 1]
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    z_D, z_G = learner.sample_noise()
    lr = learner.schedule.lr
    learner.state, metrics = train_step(
        learner.G_forward, learner.D_forward, learner.opt_G, learner.opt_D, x, z_D, z_G,
        learner.state, cfg,
    )  # fmt: skip
    if learner.schedule.observe(metrics["m_global"]):
        learner.schedule.apply(learner.opt_G, learner.opt_D)
    return metrics, lr


def _run_to_the_end(
    learner: Learner, sampler: BatchSampler, recorder: RunRecorder, stop_flag: StopFlag
) -> TrainResult:
    stop_reason: str | None = None
    while learner.state.step < learner.cfg.steps and stop_reason is None:
        if stop_flag:
            recorder.interrupt(stop_flag.signal_name)
        metrics, lr = step_once(learner, sampler)
        stop_reason = recorder.after_step(metrics, lr)
    return recorder.finish(stop_reason)


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
