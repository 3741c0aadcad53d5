"""One trial, as optuna-examples would write it: trial -> config -> train -> values.

The training in between is the worker's (`studies.fleet.worker`), which may train several
trials at once as one pack: `start_trial` is everything before it (the params, the
config, the trial's MLflow run, its monitor, the run opened and resumed), and
`trial_outcome` turns how the run ended into what Optuna is told. Which trial to run,
heartbeats and retries are the worker's; objectives' names and directions are in
`studies.objectives`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import optuna
from optuna.trial import TrialState

from began.config import TrainConfig
from began.tracking import MlflowTracker
from began.training.interrupts import StopFlag
from began.training.loop import DataCache, OpenRun, TrainingDiverged, TrainResult, open_run
from studies.collapse import collapse_warning
from studies.pruning import TrialMonitor, retrying_unless_finished
from studies.records import trial_tracker
from studies.schema import (
    COLLAPSE_WARNING_TAG,
    FINAL_ATTR,
    FINAL_M_GLOBAL,
    FINAL_STEP,
    RUN_ID_ATTR,
    START_STEP_ATTR,
)
from studies.space import suggest
from studies.spec import StudySpec


@dataclass
class StartedTrial:
    """A trial whose run is open: `run` to train, or `result` when it was already complete."""

    trial: optuna.Trial
    cfg: TrainConfig
    tracker: MlflowTracker
    flag: StopFlag = field(default_factory=StopFlag)  # abandon: another worker took it over
    run: OpenRun | None = None
    result: TrainResult | None = None


@dataclass(frozen=True)
class TrialOutcome:
    tracker: MlflowTracker  # the trial's MLflow run
    state: TrialState  # COMPLETE or PRUNED
    values: list[float] | None  # the objectives, in order (COMPLETE only)
    reason: str | None = None  # why it was pruned
    step: int = 0


def start_trial(
    trial: optuna.Trial,
    spec: StudySpec,
    device: str,
    parent_run_id: str,
    data: DataCache,
    signals: StopFlag | None = None,
) -> StartedTrial:
    params = suggest(trial, spec.space)  # a queued grid point, a retry's params, or sampled
    cfg = replace(spec.base_config, **params, device=device)
    tracker = trial_tracker(spec, trial, parent_run_id)  # a new child run, or the one retried
    # Before training: a retry of this trial finds its run by this attribute.
    retrying_unless_finished(lambda: trial.set_user_attr(RUN_ID_ATTR, tracker.run_id))
    started = StartedTrial(trial, cfg, tracker)
    monitor = TrialMonitor(trial, list(spec.objectives), spec.health)
    opened = open_run(
        cfg, tracker, should_stop=monitor, cache_dir=spec.cache_dir,
        log_models_when_stopped=False,  # a pruned trial's models are not worth the upload
        stop_flag=started.flag, data=data, signals=signals,
    )  # fmt: skip
    if isinstance(opened, TrainResult):
        started.result = opened
    else:
        started.run = opened
        # How a retry tells a killed attempt that advanced the run from one that did not.
        step = opened.learner.state.step
        retrying_unless_finished(lambda: trial.set_user_attr(START_STEP_ATTR, step))
    return started


def trial_outcome(
    started: StartedTrial, spec: StudySpec, ended: TrainResult | BaseException
) -> TrialOutcome:
    """What Optuna is told of a trial whose run ended so: COMPLETE with its objectives or
    PRUNED with why; an exception other than divergence is raised."""
    trial, tracker = started.trial, started.tracker
    if isinstance(ended, TrainingDiverged):  # NaN: the health rule's first case, mid-window
        return TrialOutcome(tracker, TrialState.PRUNED, None, f"diverged: {ended}")
    if isinstance(ended, BaseException):
        raise ended
    final = _final_metrics(ended)
    retrying_unless_finished(lambda: trial.set_user_attr(FINAL_ATTR, final))
    warning = collapse_warning(final, spec.health.collapse_ssim)
    if warning:  # on the run, where mlflow ui and the report show it
        tracker.set_tags({COLLAPSE_WARNING_TAG: warning})
    if ended.stopped_early:
        return TrialOutcome(tracker, TrialState.PRUNED, None, ended.stop_reason, ended.step)
    values = [o.value(ended.final.m_global, ended.final.metrics) for o in spec.objectives]
    if not all(math.isfinite(v) for v in values):
        named = ", ".join(f"{o.logged}={v}" for o, v in zip(spec.objectives, values, strict=True))
        return TrialOutcome(tracker, TrialState.PRUNED, None, f"objective not finite: {named}")
    return TrialOutcome(tracker, TrialState.COMPLETE, values, None, ended.step)


def _final_metrics(result: TrainResult) -> dict[str, float]:
    final = {FINAL_STEP: result.step, FINAL_M_GLOBAL: result.final.m_global,
             **result.final.metrics}  # fmt: skip
    return {k: v for k, v in final.items() if math.isfinite(v)}
