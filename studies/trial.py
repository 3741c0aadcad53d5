"""One trial, as optuna-examples would write it: trial -> config -> train -> values.

Everything around it (which trial to run, heartbeats, telling Optuna, retries)
lives in `studies.worker`; the objectives' names and directions in `studies.objectives`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import optuna
from optuna.trial import TrialState

from began.interrupts import StopFlag
from began.loop import TrainingDiverged, TrainResult, train
from began.tracking import MlflowTracker
from studies.collapse import collapse_warning
from studies.pruning import TrialMonitor
from studies.records import trial_tracker
from studies.retry import retrying
from studies.schema import (
    COLLAPSE_WARNING_TAG,
    FINAL_ATTR,
    FINAL_M_GLOBAL,
    FINAL_STEP,
    RUN_ID_ATTR,
)
from studies.space import suggest
from studies.spec import StudySpec


@dataclass(frozen=True)
class TrialOutcome:
    tracker: MlflowTracker  # the trial's MLflow run
    state: TrialState  # COMPLETE or PRUNED
    values: list[float] | None  # the objectives, in order (COMPLETE only)
    reason: str | None = None  # why it was pruned
    step: int = 0


def run_trial(
    trial: optuna.Trial,
    spec: StudySpec,
    device: str,
    parent_run_id: str,
    taken_over: StopFlag | None = None,
) -> TrialOutcome:
    params = suggest(trial, spec.space)  # a queued grid point, a retry's params, or sampled
    cfg = replace(spec.base_config, **params, device=device)
    tracker = trial_tracker(spec, trial, parent_run_id)  # a new child run, or the one retried
    retrying(lambda: trial.set_user_attr(RUN_ID_ATTR, tracker.run_id))  # before training
    monitor = TrialMonitor(trial, list(spec.objectives), spec.health)
    try:
        result = train(
            cfg, tracker, should_stop=monitor, cache_dir=spec.cache_dir,
            log_models_when_stopped=False,  # a pruned trial's models are not worth the upload
            stop_flag=taken_over,  # another worker took the trial over: stop, touch nothing
        )  # fmt: skip
    except TrainingDiverged as error:  # NaN: the health rule's first case, found mid-window
        return TrialOutcome(tracker, TrialState.PRUNED, None, f"diverged: {error}")
    _record_final(trial, result)
    warning = collapse_warning(_final_metrics(result), spec.health.collapse_ssim)
    if warning:  # on the run, where mlflow ui and the report show it
        tracker.set_tags({COLLAPSE_WARNING_TAG: warning})
    if result.stopped_early:
        return TrialOutcome(tracker, TrialState.PRUNED, None, result.stop_reason, result.step)
    values = [o.value(result.final.m_global, result.final.metrics) for o in spec.objectives]
    if not all(math.isfinite(v) for v in values):
        named = ", ".join(f"{o.logged}={v}" for o, v in zip(spec.objectives, values, strict=True))
        return TrialOutcome(tracker, TrialState.PRUNED, None, f"objective not finite: {named}")
    return TrialOutcome(tracker, TrialState.COMPLETE, values, None, result.step)


def _final_metrics(result: TrainResult) -> dict[str, float]:
    final = {FINAL_STEP: result.step, FINAL_M_GLOBAL: result.final.m_global,
             **result.final.metrics}  # fmt: skip
    return {k: v for k, v in final.items() if math.isfinite(v)}


def _record_final(trial: optuna.Trial, result: TrainResult) -> None:
    finite = _final_metrics(result)
    retrying(lambda: trial.set_user_attr(FINAL_ATTR, finite))
