"""The BEGAN training loop of one run: `train(cfg, tracker, should_stop)`.

    open the run -> until it is complete: stop if asked, one step, its record -> the end

`open_run` is everything before the first step: the tracker's run, the data, the
`Learner` (networks, optimizers, state) resumed from the run's checkpoint when there is
one, and its `RunRecorder`. Then the loop alternates the math (`step_once`:
`began.core.step.train_step` on the run's next batch) with the recorder (logs, grids,
evaluations and should_stop, checkpoints) until the run reaches cfg.steps or should_stop
ends it; `RunRecorder.finish` writes the final record. Ctrl-C, SIGTERM and SIGHUP stop
the run between steps, with a checkpoint; `end_run` records how a run ended, however it
ended.

A study's worker trains several runs at once (one model where they share a shape,
`began.training.pack`) from the same pieces: `open_run`, `step_once`, `end_run`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from began.checkpoint import Checkpoint, load_checkpoint_or_previous
from began.config import ConfigError, TrainConfig
from began.core.step import train_step
from began.data import BatchSampler, ImageSet, load_images, split_holdout
from began.tracking import FAILED, FINISHED, KILLED, RUNNING, Tracker
from began.training.device import configure_device
from began.training.interrupts import RunAbandoned, StopFlag, deferred_interrupts
from began.training.learner import Learner, build_learner, resolve_device, restore
from began.training.provenance import dataset_input, run_tags
from began.training.recorder import (
    STOPPED,
    EvalReport,
    PackOutOfMemory,
    RunRecorder,
    StopDecision,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
)

__all__ = [
    "STOPPED",
    "DataCache",
    "EvalReport",
    "OpenRun",
    "PackOutOfMemory",
    "RunAbandoned",
    "StopFlag",
    "StopDecision",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "end_run",
    "open_run",
    "step_once",
    "train",
]

INTERRUPTED_TWICE = "interrupted twice: stopped without a checkpoint"


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
    (`StopFlag.abandon`); Ctrl-C, SIGTERM and SIGHUP set it too. A second Ctrl-C stops
    at once, without a checkpoint. Any other error marks the run FAILED and is raised.
    """
    with deferred_interrupts(stop_flag) as flag:
        run = open_run(cfg, tracker, should_stop, quiet=quiet, cache_dir=cache_dir,
                       log_models_when_stopped=log_models_when_stopped, stop_flag=flag)  # fmt: skip
        if isinstance(run, TrainResult):
            return run  # complete and FINISHED already
        try:
            while not run.recorder.complete:
                if flag:  # checkpoint and raise TrainingInterrupted; abandoned: RunAbandoned
                    run.recorder.interrupt(flag)
                metrics, lr = step_once(run.learner, run.sampler)
                run.recorder.after_step(metrics, lr)
            result = run.recorder.finish()
        except BaseException as error:
            end_run(run, error)
            raise
        end_run(run)
        return result


@dataclass
class OpenRun:
    """A run in the loop: its learner, its batches, its record, and the flag that can
    take it away (`StopFlag.abandon`)."""

    learner: Learner
    sampler: BatchSampler
    recorder: RunRecorder
    flag: StopFlag

    @property
    def tracker(self) -> Tracker:
        return self.recorder.tracker


class DataCache:
    """The runs of one process share their data: loaded once per data options and
    device, on the device once (a pack of 16 trials holds one copy, not 16)."""

    def __init__(self) -> None:
        self._found: dict[tuple, tuple[ImageSet, torch.Tensor, np.ndarray]] = {}

    def get(
        self, cfg: TrainConfig, device: torch.device, quiet: bool, cache_dir: str | None
    ) -> tuple[ImageSet, torch.Tensor, np.ndarray]:
        key = (cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale, cfg.holdout, str(device))
        if key not in self._found:
            dataset = load_images(
                cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale,
                cache_dir=cache_dir, progress=not quiet,
            )  # fmt: skip
            train_images, heldout = split_holdout(dataset.images, cfg.holdout)
            self._found[key] = (dataset, torch.from_numpy(train_images).to(device), heldout)
        return self._found[key]


def open_run(
    cfg: TrainConfig,
    tracker: Tracker,
    should_stop: Callable[[EvalReport], StopDecision] | None = None,
    *,
    quiet: bool = True,
    cache_dir: str | None = None,
    log_models_when_stopped: bool = True,
    stop_flag: StopFlag | None = None,
    data: DataCache | None = None,
    signals: StopFlag | None = None,
) -> OpenRun | TrainResult:
    """Everything before a run's first step: the run, the data, the learner resumed from
    the run's checkpoint, the recorder, the run started. A complete and FINISHED run
    gives its result instead. A failure marks the run FAILED (unless it had ended before
    this call: a `--resume` with a bad --data keeps its status) and is raised.

    `stop_flag` is the run's own (another thread may abandon the run through it);
    `signals` the loop's (a stop signal): a run asked to stop is not started at all
    (TrainingInterrupted), so that every start of a run is a start its loop goes on with.
    """
    tracker.create()
    try:
        device = resolve_device(cfg.device)
        configure_device(cfg, device)  # before the data or the networks go to the device
        dataset, train_images, heldout = (data or DataCache()).get(cfg, device, quiet, cache_dir)
        learner = build_learner(cfg, device)
        checkpoint = _checkpoint_to_resume(tracker, dataset)
        if checkpoint is not None:
            restore(learner, checkpoint)
        recorder = RunRecorder(
            learner, tracker, dataset, heldout, should_stop, quiet=quiet,
            cache_dir=cache_dir, log_models_when_stopped=log_models_when_stopped,
        )  # fmt: skip
    except BaseException as error:
        if not isinstance(error, RunAbandoned) and _still_running(tracker):
            _mark_failed(tracker, error)
        raise
    try:
        if checkpoint is not None:
            recorder.resume_from(checkpoint)
            if recorder.complete and tracker.status == FINISHED:
                recorder.close()
                return recorder.result(already_complete=True)
        if any(f is not None and f.requested for f in (stop_flag, signals)):
            recorder.close()
            raise TrainingInterrupted(f"stopped before run {tracker.run_id} started")
        tracker.start(cfg, run_tags(cfg, dataset, device), resumed=checkpoint is not None)
        tracker.log_dataset(**dataset_input(cfg, dataset))
        if learner.state.step == 0:
            recorder.log_grids()  # what training starts from, and a grid for the UI at once
    except BaseException as error:
        tracker.stop_system_metrics()  # started with the run: it must not outlive this call
        recorder.close()
        quiet_stop = isinstance(error, RunAbandoned | TrainingInterrupted)
        if not quiet_stop and _still_running(tracker):
            _mark_failed(tracker, error)
        raise
    if not quiet:
        tqdm.write(f"run {tracker.run_id}: {dataset.kept} images, device {device}")
    sampler = BatchSampler(train_images, cfg.batch_size, cfg.seed)
    return OpenRun(learner, sampler, recorder, stop_flag or StopFlag())


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


def end_run(run: OpenRun, error: BaseException | None = None) -> None:
    """Close a run that left the loop, marked as it ended when `error` ended it: a stop is
    recorded already (TrainingInterrupted: checkpointed and KILLED by the recorder;
    RunAbandoned: the run is another worker's now, nothing may touch it), a second Ctrl-C
    while stopping marks it KILLED without a checkpoint, any other error marks it FAILED."""
    if error is None or isinstance(error, TrainingInterrupted | RunAbandoned):
        pass  # it finished, or it stopped and the recorder said so
    elif isinstance(error, PackOutOfMemory):
        _finish_quietly(run.tracker, KILLED, str(error))
    elif isinstance(error, KeyboardInterrupt):
        _finish_quietly(run.tracker, KILLED, INTERRUPTED_TWICE)
    else:
        _mark_failed(run.tracker, error)
    # Each end above stopped the run's system metrics (finish) but a run let go: another
    # worker has it now, and this process's monitor must not go on writing into it.
    run.tracker.stop_system_metrics()
    run.recorder.close()


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


def _mark_failed(tracker: Tracker, error: BaseException) -> None:
    _finish_quietly(tracker, FAILED, f"{type(error).__name__}: {error}")


def _finish_quietly(tracker: Tracker, status: str, error: str) -> None:
    """Record how the run ended without hiding why it ended, even if the store is down."""
    try:
        tracker.finish(status, error=error)
    except Exception as tracking_error:
        warnings.warn(f"could not mark the run {status}: {tracking_error}", stacklevel=2)
