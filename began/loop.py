"""The BEGAN training loop: `train(cfg, tracker, should_stop)`.

One function from a config to a finished run. It builds a `Learner` (the networks,
optimizers and state), resumes it from the tracker's checkpoint when there is one,
and then alternates `step_once` (the math: `began.step.train_step`) with the run's
`RunRecorder` (logs, grids, evaluations, checkpoints). `should_stop` sees every
evaluation; pruning and a study's bookkeeping plug in there. Ctrl-C and SIGTERM stop
between steps, with a checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from tqdm import tqdm

from began.checkpoint import Checkpoint, load_checkpoint_or_previous
from began.config import ConfigError, TrainConfig
from began.data import BatchSampler, ImageSet, load_images, split_holdout
from began.interrupts import RunAbandoned, StopFlag, deferred_interrupts
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
from began.tracking import FAILED, FINISHED, KILLED, RUNNING, Tracker

__all__ = [
    "STOPPED",
    "EvalReport",
    "RunAbandoned",
    "StopFlag",
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
    stop_flag: StopFlag | None = None,
) -> TrainResult:
    """Train one run to cfg.steps, resuming from the tracker's checkpoint when it has one.

    The run exists in the tracker (tracker.run_id) before the data loads. A run that is
    complete (its checkpoint reached cfg.steps or should_stop ended it) and FINISHED is
    not trained or logged again: the result carries its final evaluation and
    `already_complete`. A complete run that is not FINISHED (killed during its final
    record) gets the rest of that record.

    `should_stop` may keep state across a kill: with `state_dict`/`load_state_dict`, its
    state rides in the checkpoint. `stop_flag` lets another thread stop the run
    (`StopFlag.abandon`); Ctrl-C, SIGTERM and SIGHUP set it too.
    """
    tracker.create()
    started = False
    recorder: RunRecorder | None = None
    with deferred_interrupts(stop_flag) as flag:
        try:
            device = resolve_device(cfg.device)
            dataset = load_images(
                cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale,
                cache_dir=cache_dir, progress=not quiet,
            )  # fmt: skip
            train_images, heldout_images = split_holdout(dataset.images, cfg.holdout)
            learner = build_learner(cfg, device)
            checkpoint = _checkpoint_to_resume(tracker, dataset)
            if checkpoint is not None:
                restore(learner, checkpoint)
            recorder = RunRecorder(
                learner, tracker, dataset, heldout_images, should_stop, quiet=quiet,
                cache_dir=cache_dir, log_models_when_stopped=log_models_when_stopped,
            )  # fmt: skip
            if checkpoint is not None:
                recorder.resume_from(checkpoint)
                if recorder.complete and tracker.status == FINISHED:
                    return recorder.result(already_complete=True)
            tracker.start(cfg, run_tags(cfg, dataset, device), resumed=checkpoint is not None)
            started = True
            if not quiet:
                tqdm.write(f"run {tracker.run_id}: {dataset.kept} images, device {device}")
            sampler = BatchSampler(
                torch.from_numpy(train_images).to(device), cfg.batch_size, cfg.seed
            )
            return _run_to_the_end(learner, sampler, recorder, flag)
        except (TrainingInterrupted, RunAbandoned):
            raise  # checkpointed and marked KILLED, or the run is someone else's now
        except KeyboardInterrupt:
            _finish_quietly(tracker, KILLED, "interrupted twice: stopped without a checkpoint")
            raise
        except BaseException as error:
            # A run that had ended before this call and failed before it started again
            # (`--resume` with a bad --data) keeps its status; any other ends FAILED.
            if started or _still_running(tracker):
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
    while not recorder.complete:
        if stop_flag:
            recorder.interrupt(stop_flag)
        metrics, lr = step_once(learner, sampler)
        recorder.after_step(metrics, lr)
    return recorder.finish()


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


def _still_running(tracker: Tracker) -> bool:
    try:
        return tracker.status in (None, RUNNING)
    except Exception:  # the store is away: try to mark it anyway
        return True


def _finish_quietly(tracker: Tracker, status: str, error: str) -> None:
    """Record how the run ended without hiding why it ended, even if the store is down."""
    try:
        tracker.finish(status, error=error)
    except Exception as tracking_error:
        warnings.warn(f"could not mark the run {status}: {tracking_error}", stacklevel=2)
