"""The MLflow side of a study: one parent run, one nested child run per trial.

A thin layer over `MlflowClient` (optuna-integration's MLflowCallback is deprecated
and cannot nest runs). The parent run carries the tag `study_name` and the study's
settings as params; each trial's run is its child (`mlflow.parentRunId`) with the
tags `study_name` and `trial_number`, the whole training record of a single run,
and at the end its state, objective values and, if it stopped early, the reason.
"""

from __future__ import annotations

import csv
import io
import math
import time
from typing import Any

import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag
from optuna.trial import FrozenTrial, TrialState

from began.tracking import (
    MAX_PARAM_LENGTH,
    MlflowTracker,
    experiment_id,
    mask_url,
    with_retries,
)
from studies.space import describe_space
from studies.spec import StudySpec
from studies.storage import FINAL_ATTR, PARENT_RUN_ATTR, REASON_ATTR, RUN_ID_ATTR, is_retry


def client_for(spec: StudySpec) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(spec.tracking_uri)


def open_parent_run(spec: StudySpec, study: optuna.Study) -> str:
    """The study's parent run: created on the first run of the study, reopened after."""
    client = client_for(spec)
    known = study.user_attrs.get(PARENT_RUN_ATTR)
    if known:
        with_retries(lambda: client.update_run(known, status="RUNNING"), "reopening the study run")
        return known
    run = with_retries(
        lambda: client.create_run(
            experiment_id(client, spec.experiment),
            run_name=spec.study_name,
            tags={"study_name": spec.study_name, "study_kind": spec.kind},
        ),
        "creating the study's parent run",
    )
    params = {
        "study_name": spec.study_name,
        "storage": mask_url(spec.storage),
        "space": describe_space(spec.space),
        "objectives": ",".join(o.logged for o in spec.objectives),
        "directions": ",".join(spec.directions),
        "sampler": spec.sampler if spec.kind != "grid" else "grid (queued)",
        "seed": spec.seed,
        "pruner": spec.pruner,
        "health_rule": str(spec.health),
        "trials": spec.total_trials if spec.total_trials is not None else "unbounded",
    }
    if spec.grid:
        params["grid"] = " ".join(f"{p['gamma']}/{p['seed']}" for p in spec.grid)[:MAX_PARAM_LENGTH]
    entries = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
    entries += [
        Param(f"base.{k}", str(v)[:MAX_PARAM_LENGTH]) for k, v in spec.base_config.to_dict().items()
    ]
    client.log_batch(run.info.run_id, params=entries)
    client.log_text(run.info.run_id, spec.base_config.to_json(), "base_config.json")
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    return run.info.run_id


def trial_tracker(spec: StudySpec, trial: optuna.Trial, parent_run_id: str) -> MlflowTracker:
    """The trial's run: its own from an earlier attempt (a retry continues it), or a new one."""
    earlier = trial.user_attrs.get(RUN_ID_ATTR)
    if earlier:
        tracker = MlflowTracker(spec.tracking_uri, run_id=earlier, run_option="trial run")
    else:
        tracker = MlflowTracker(
            spec.tracking_uri, spec.experiment, f"trial-{trial.number}", parent_run_id=parent_run_id
        )
    tracker.create()
    tags = {"study_name": spec.study_name, "trial_number": str(trial.number)}
    if earlier:
        tags["retried_as_trial"] = str(trial.number)
    tracker.set_tags(tags)
    return tracker


def record_trial_end(
    tracker: MlflowTracker,
    state: TrialState,
    values: dict[str, float] | None,
    reason: str | None,
    step: int,
) -> None:
    """The trial's outcome on its run: state, objective values, and why it stopped."""
    tags = {"trial_state": state.name}
    if reason:
        tags["prune_reason" if state == TrialState.PRUNED else "fail_reason"] = reason
    tracker.set_tags(tags)
    if values:
        now = _now_ms()
        metrics = [Metric(f"objective_{k}", float(v), now, step) for k, v in values.items()]
        with_retries(
            lambda: tracker.client.log_batch(tracker.run_id, metrics=metrics),
            "logging the objective values",
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, retries included: what the parent run's table shows."""
    names = [str(n) for n in study.user_attrs.get("objectives", [])]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": trial.state.name,
            **{k: v for k, v in sorted(trial.params.items())},
        }
        for i, name in enumerate(names):
            value = trial.values[i] if trial.values is not None else None
            row[name] = value
        final = trial.user_attrs.get(FINAL_ATTR, {})
        row["diversity_ssim"] = final.get("diversity_ssim")
        row["seconds"] = (
            round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        row["retry_of"] = trial.system_attrs.get("failed_trial") if is_retry(trial) else None
        row["reason"] = trial.user_attrs.get(REASON_ATTR, "")
        row["mlflow_run_id"] = trial.user_attrs.get(RUN_ID_ATTR, "")
        rows.append(row)
    return rows


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several); [] before any completes."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return list(study.best_trials)


def _markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def close_parent_run(spec: StudySpec, study: optuna.Study, run_id: str, status: str) -> None:
    """Write the trials table and the best trials into the parent run, then end it."""
    client = client_for(spec)
    rows = trials_table(study)
    best = best_trials(study)
    best_numbers = {t.number for t in best}
    summary = [row for row in rows if row["trial"] in best_numbers]
    client.log_text(run_id, _markdown(rows), "trials.md")
    client.log_text(run_id, _csv(rows) if rows else "", "trials.csv")
    client.log_text(run_id, _markdown(summary), "best_trials.md")
    tags = [RunTag("best_trials", ",".join(str(n) for n in sorted(best_numbers)))]
    metrics = []
    counts = {s.name: 0 for s in TrialState}
    for row in rows:
        counts[row["state"]] += 1
    now = _now_ms()
    metrics += [Metric(f"trials_{state.lower()}", n, now, 0) for state, n in counts.items()]
    if len(best) == 1:
        [trial] = best
        tags.append(RunTag("best_run_id", str(trial.user_attrs.get(RUN_ID_ATTR, ""))))
        for objective, value in zip(spec.objectives, trial.values, strict=True):
            metrics.append(Metric(f"best_{objective.logged}", float(value), now, 0))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    with_retries(lambda: client.set_terminated(run_id, status=status), "ending the study run")
