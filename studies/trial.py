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
from typing import Any

import optuna
from optuna.trial import TrialState

from began.config import TrainConfig
from began.tracking import MlflowTracker, process_identity, slurm_task
from began.training.interrupts import StopFlag
from began.training.loop import DataCache, OpenRun, TrainingDiverged, TrainResult, open_run
from studies.collapse import collapse_flag, collapse_warning
from studies.naming import description, objective_values, trial_name
from studies.pruning import TrialMonitor, retrying_unless_finished
from studies.records import objectives_text, trial_tracker
from studies.schema import (
    COLLAPSE_ATTR,
    COLLAPSE_WARNING_TAG,
    FINAL_M_GLOBAL,
    FINAL_PREFIX,
    FINAL_STEP,
    RUN_ID_ATTR,
    START_STEP_ATTR,
    WORKER_ATTR,
    rounded,
)
from studies.space import suggest
from studies.spec import StudySpec


@dataclass
class StartedTrial:
    """A trial whose run is open: `run` to train, or `result` when it was already complete."""

    trial: optuna.Trial
    cfg: TrainConfig
    tracker: MlflowTracker
    name: str  # studies.naming: "t3 gamma=0.5"
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
    description: str | None = None  # the run's description, with the outcome


def start_trial(
    trial: optuna.Trial,
    spec: StudySpec,
    device: str,
    parent_run_id: str,
    data: DataCache,
    signals: StopFlag | None = None,
    fixed: dict[str, Any] | None = None,
) -> StartedTrial:
    """Open the trial's run. `fixed`: params it was queued with that Optuna does not
    search (a grid point's seed); each is kept as a trial attribute of its own name."""
    params = suggest(trial, spec.space)  # a queued grid point, a retry's params, or sampled
    for name, value in (fixed or {}).items():
        if trial.user_attrs.get(name) != value:
            retrying_unless_finished(lambda n=name, v=value: trial.set_user_attr(n, v))
    point = {**params, **(fixed or {})}
    task = slurm_task()
    worker = process_identity() + (f" slurm {task}" if task else "")
    retrying_unless_finished(lambda: trial.set_user_attr(WORKER_ATTR, worker))
    cfg = replace(spec.base_config, **point, device=device)
    tracker = trial_tracker(spec, trial, parent_run_id, point)  # new, or the one retried
    # Before training: a retry of this trial finds its run by this attribute.
    retrying_unless_finished(lambda: trial.set_user_attr(RUN_ID_ATTR, tracker.run_id))
    started = StartedTrial(trial, cfg, tracker, trial_name(trial.number, point, spec.named))
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
    # One attribute per metric (a line each in optuna-dashboard), the step last: a trial
    # with `final_step` has them all.
    for name, value in sorted(final.items(), key=lambda item: item[0] == FINAL_STEP):
        shown = value if name == FINAL_STEP else rounded(value)
        retrying_unless_finished(lambda n=name, v=shown: trial.set_user_attr(FINAL_PREFIX + n, v))
    warning = collapse_warning(final, spec.health.collapse_ssim)
    if warning:  # on the trial and its run: optuna-dashboard, mlflow ui and the report show it
        flag = collapse_flag(final, spec.health.collapse_ssim)
        retrying_unless_finished(lambda: trial.set_user_attr(COLLAPSE_ATTR, flag))
        tracker.set_tags({COLLAPSE_WARNING_TAG: warning})

    names = [o.logged for o in spec.objectives]

    def outcome(state: TrialState, values=None, reason=None, step=ended.step) -> TrialOutcome:
        said = state.name + (f" {objective_values(names, values)}" if values else "")
        said += f" ({reason})" if reason else ""
        about = description(started.name, spec.study_name, objectives_text(spec), said, warning)
        return TrialOutcome(tracker, state, values, reason, step, about)

    if ended.stopped_early:
        return outcome(TrialState.PRUNED, reason=ended.stop_reason)
    values = [o.value(ended.final.m_global, ended.final.metrics) for o in spec.objectives]
    if not all(math.isfinite(v) for v in values):
        named = ", ".join(f"{o.logged}={v}" for o, v in zip(spec.objectives, values, strict=True))
        return outcome(TrialState.PRUNED, reason=f"objective not finite: {named}", step=0)
    return outcome(TrialState.COMPLETE, values)


def _final_metrics(result: TrainResult) -> dict[str, float]:
    final = {FINAL_STEP: result.step, FINAL_M_GLOBAL: result.final.m_global,
             **result.final.metrics}  # fmt: skip
    return {k: v for k, v in final.items() if math.isfinite(v)}
