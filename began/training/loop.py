"""The BEGAN training loop: `train(cfg, tracker, should_stop)`, and the same loop over
several runs at once (`run_runs`), which a study's worker uses to train packed trials.

A run is opened once (`open_run`: the tracker's run, the data, the `Learner` with its
networks, optimizers and state, resumed from the run's checkpoint when there is one, and
its `RunRecorder`), then the loop alternates the math (`began.core.step.train_step`, one run
at a time or a pack of runs of one architecture as one model: `began.training.pack`) with each
run's recorder (logs, grids, evaluations and should_stop, checkpoints). A run that ends,
however it ends, leaves the loop alone: the others go on, and new ones may join.
Ctrl-C, SIGTERM and SIGHUP stop every run between steps, each with a checkpoint.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from began.checkpoint import Checkpoint, load_checkpoint_or_previous
from began.config import ConfigError, TrainConfig
from began.core.step import train_step
from began.data import BatchSampler, ImageSet, load_images, split_holdout
from began.tracking import FAILED, FINISHED, KILLED, RUNNING, Tracker
from began.training.interrupts import RunAbandoned, StopFlag, deferred_interrupts
from began.training.learner import Learner, build_learner, resolve_device, restore
from began.training.pack import pack_key, step_pack
from began.training.provenance import run_tags
from began.training.recorder import (
    STOPPED,
    EvalReport,
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
    "RunAbandoned",
    "StopFlag",
    "StopDecision",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "open_run",
    "run_runs",
    "step_once",
    "train",
]

Outcome = TrainResult | BaseException  # how a run left the loop


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
    with deferred_interrupts(stop_flag) as flag:
        run = open_run(cfg, tracker, should_stop, quiet=quiet, cache_dir=cache_dir,
                       log_models_when_stopped=log_models_when_stopped, stop_flag=flag)  # fmt: skip
        if isinstance(run, TrainResult):
            return run
        outcomes: list[Outcome] = []
        run_runs([run], flag, lambda _, outcome: outcomes.append(outcome))
    [outcome] = outcomes
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@dataclass
class OpenRun:
    """A run in the loop: its learner, its batches, its record, and the flag that can
    take it away (`StopFlag.abandon`)."""

    learner: Learner
    sampler: BatchSampler
    recorder: RunRecorder
    flag: StopFlag
    key: tuple = ()  # began.training.pack.pack_key: runs with equal keys step as one model

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
            _finish_quietly(tracker, FAILED, f"{type(error).__name__}: {error}")
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
    except BaseException as error:
        recorder.close()
        quiet_stop = isinstance(error, RunAbandoned | TrainingInterrupted)
        if not quiet_stop and _still_running(tracker):
            _finish_quietly(tracker, FAILED, f"{type(error).__name__}: {error}")
        raise
    if not quiet:
        tqdm.write(f"run {tracker.run_id}: {dataset.kept} images, device {device}")
    sampler = BatchSampler(train_images, cfg.batch_size, cfg.seed)
    return OpenRun(learner, sampler, recorder, stop_flag or StopFlag(), pack_key(cfg))


def run_runs(
    runs: Sequence[OpenRun],
    stop_flag: StopFlag,
    on_end: Callable[[OpenRun, Outcome], None],
    more: Callable[[int], list[OpenRun]] | None = None,
) -> None:
    """Train `runs` until each has ended, handing each run's outcome to `on_end` as it
    ends: its TrainResult, or the exception that ended it (the run then marked FAILED;
    TrainingInterrupted: checkpointed and KILLED; RunAbandoned: untouched). Runs of one
    architecture step together as one model. After each step `more(n running)` may add
    runs (a study's worker refilling its pack).

    A stop signal (`stop_flag.requested`) ends every run with a checkpoint; a second
    Ctrl-C ends them at once (KILLED) and is raised.
    """
    active = list(runs)

    def end(run: OpenRun, outcome: Outcome) -> None:
        active.remove(run)
        if isinstance(outcome, BaseException) and not isinstance(
            outcome, TrainingInterrupted | RunAbandoned
        ):
            _finish_quietly(run.tracker, FAILED, f"{type(outcome).__name__}: {outcome}")
        run.recorder.close()
        on_end(run, outcome)

    try:
        while active:
            for run in list(active):
                if run.flag.abandoned_because:
                    end(run, RunAbandoned(run.flag.abandoned_because))
                elif stop_flag.requested or run.flag.requested:
                    end(run, _interrupted(run, stop_flag))
                elif run.recorder.complete:  # resumed after a kill in its final record
                    end(run, _finished(run))
            for group in _packs(active):
                _step(group, end)
            if more is not None and not stop_flag:
                active += more(len(active))
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoints, every run KILLED
        for run in list(active):
            _finish_quietly(run.tracker, KILLED, "interrupted twice: stopped without a checkpoint")
            run.recorder.close()
        raise


def _finished(run: OpenRun) -> Outcome:
    try:
        return run.recorder.finish()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:
        return error


def _interrupted(run: OpenRun, stop_flag: StopFlag) -> BaseException:
    try:
        run.recorder.interrupt(stop_flag if stop_flag.requested else run.flag)
    except BaseException as stopped:  # TrainingInterrupted, or why the checkpoint failed
        return stopped
    raise AssertionError("RunRecorder.interrupt returned")


def _packs(runs: list[OpenRun]) -> list[list[OpenRun]]:
    """The runs grouped by architecture: each group steps as one model."""
    if len(runs) == 1:
        return [runs]
    groups: dict[tuple, list[OpenRun]] = defaultdict(list)
    for run in runs:
        groups[run.key].append(run)
    return list(groups.values())


def _step(group: list[OpenRun], end: Callable[[OpenRun, Outcome], None]) -> None:
    """One step of every run of a group, then each run's record of it."""
    try:
        if len(group) == 1:
            results = [step_once(group[0].learner, group[0].sampler)]
        else:
            results = step_pack([r.learner for r in group], [r.sampler for r in group])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # the fused step failed (out of memory): every run of it
        for run in group:
            end(run, error)
        return
    for run, (metrics, lr) in zip(group, results, strict=True):
        try:
            run.recorder.after_step(metrics, lr)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            end(run, error)
            continue
        if run.recorder.complete:
            end(run, _finished(run))


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
