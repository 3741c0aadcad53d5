"""Loading: Optuna trials joined with their MLflow runs, one row per trial, real dtypes.

Column names of `load_runs`:
- `trial`, `state` (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), `reason`, `current`
  (False for a trial whose MLflow run was continued by a later retry), `retry_of`;
- the training config as typed columns (`gamma`, `lambda_k`, `seed`, `steps`, `log_every`, ...);
- `objective_<name>` (the trial's values), `final_<metric>` (each run metric's last value:
  `final_m_global_mean`, `final_fid_1k`, `final_diversity_gap`, ...);
- `run_id`, `run_status`, `start_time`, `end_time`, `wall_s`.
Study-level facts (objectives, directions, parent run) ride along in `df.attrs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import optuna
import pandas as pd

from analysis import store
from analysis.history import load_history
from analysis.sources import (
    DEFAULT_STORAGE,
    AnalysisError,
    default_tracking_uri,
)
from studies import schema
from studies.fleet.storage import StudyError, open_existing_study

__all__ = ["AnalysisError", "load_history", "load_runs", "load_trials", "open_study"]

STATES = list(schema.STATES)
# MLflow run status -> trial state, for runs that are not part of a study.
RUN_STATES = {"FINISHED": schema.COMPLETE, "FAILED": schema.FAIL, "KILLED": schema.FAIL,
              "RUNNING": schema.RUNNING, "SCHEDULED": schema.WAITING}  # fmt: skip


def open_study(study: str, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    try:
        return open_existing_study(study, storage)
    except StudyError as error:
        raise AnalysisError(str(error)) from None


def load_trials(study: str | optuna.Study, storage: str = DEFAULT_STORAGE) -> pd.DataFrame:
    """One row per Optuna trial, retries included, with the study's facts in `attrs`."""
    if isinstance(study, str):
        study = open_study(study, storage)
    names = [str(n) for n in study.user_attrs.get(schema.OBJECTIVES_ATTR, [])]
    trials = study.get_trials(deepcopy=False)
    if len(names) < len(study.directions):
        names = [f"value_{i}" for i in range(len(study.directions))]
    latest: dict[str, int] = {}  # run id -> the latest trial that continues it
    for t in trials:
        run_id = t.user_attrs.get(schema.RUN_ID_ATTR)
        if run_id:
            latest[run_id] = max(latest.get(run_id, -1), t.number)
    rows = [_trial_row(t, names, latest) for t in trials]
    df = pd.DataFrame(rows, columns=_TRIAL_COLUMNS + [schema.OBJECTIVE_PREFIX + n for n in names])
    df = pd.concat([df, pd.DataFrame([_params_and_final(t) for t in trials])], axis=1)
    df["state"] = pd.Categorical(df["state"], categories=STATES)
    df.attrs.update(
        study=study.study_name, objectives=names,
        directions=[d.name.lower() for d in study.directions],
        kind=study.user_attrs.get(schema.KIND_ATTR, ""),
        parent_run_id=study.user_attrs.get(schema.PARENT_RUN_ATTR),
        experiment=study.user_attrs.get(schema.EXPERIMENT_ATTR, study.study_name),
        params=sorted({p for t in trials for p in t.params}),
        space=study.user_attrs.get(schema.SPACE_ATTR, ""),  # as the user gave it
        reseed_of=study.user_attrs.get(schema.RESEED_OF_ATTR),  # studies.reseed's selection
    )  # fmt: skip
    return _typed(df)


_TRIAL_COLUMNS = ["trial", "state", "reason", "run_id", "current", "retry_of",
                  "datetime_start", "datetime_complete"]  # fmt: skip


def _trial_row(t: optuna.trial.FrozenTrial, names: list[str], latest: dict) -> list[Any]:
    run_id = t.user_attrs.get(schema.RUN_ID_ATTR)
    values = list(t.values) if t.values is not None else [None] * len(names)
    return [
        t.number, t.state.name, t.user_attrs.get(schema.REASON_ATTR, ""), run_id,
        run_id is None or latest.get(run_id) == t.number,
        t.system_attrs.get(schema.FAILED_TRIAL_ATTR), t.datetime_start, t.datetime_complete,
        *values,
    ]  # fmt: skip


def _params_and_final(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    final = schema.final_metrics(t.user_attrs)
    row: dict[str, Any] = dict(t.params)
    if schema.SEED_ATTR in t.user_attrs:  # a sweep's seed: queued with its point, not searched
        row[schema.SEED_ATTR] = t.user_attrs[schema.SEED_ATTR]
    special = (schema.FINAL_STEP, schema.FINAL_M_GLOBAL)
    row.update({f"final_{k}": v for k, v in final.items() if k not in special})
    if schema.FINAL_M_GLOBAL in final:  # the study's M_global is the mean over the last window
        row["final_m_global_mean"] = final[schema.FINAL_M_GLOBAL]
    if schema.FINAL_STEP in final:
        row["final_step"] = final[schema.FINAL_STEP]
    return row


def load_runs(
    study: str | None = None,
    experiment: str | None = None,
    run_ids: Iterable[str] | None = None,
    storage: str = DEFAULT_STORAGE,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """One row per trial (`study`) or per run (`experiment`, `run_ids`): params, final
    metrics, state, times. Trials that never reached MLflow keep their row, run columns NaN."""
    tracking_uri = tracking_uri or default_tracking_uri()
    if study is not None:
        trials = load_trials(study, storage)
        found = store.search_runs(tracking_uri, trials.attrs["experiment"], f"--study {study}",
                                  {schema.STUDY_NAME_TAG: study})  # fmt: skip
        runs = _run_frame([r for r in found if schema.PARENT_RUN_TAG in r.data.tags])
        df = trials.merge(runs, on="run_id", how="left", suffixes=("", "_run"))
        for column in [c for c in df if c.endswith("_run")]:
            base = column.removesuffix("_run")
            # The trial's value first, but a final metric's from the run: the trial's
            # attribute is rounded for display.
            first, then = (column, base) if base.startswith("final_") else (base, column)
            df[base] = df[first].astype(object).where(df[first].notna(), df[then])
            df = df.drop(columns=column)
        df.attrs = trials.attrs
    elif experiment is not None:
        found = store.search_runs(tracking_uri, experiment, f"--experiment {experiment}", {})
        df = _run_frame(found)
        df = df[~df["is_parent"]].reset_index(drop=True) if len(df) else df
        df.attrs.update(study=None, experiment=experiment)
    elif run_ids is not None:
        df = _run_frame(store.get_runs(tracking_uri, list(run_ids)))
        df.attrs.update(study=None, experiment=None)
    else:
        raise AnalysisError("--study, --experiment or --runs: say which runs to load")
    if study is None:
        df = _runs_as_trials(df)
    df.attrs["tracking_uri"] = tracking_uri
    df["wall_s"] = _wall_seconds(df)
    return _typed(df.drop(columns=["is_parent"], errors="ignore"))


def _run_frame(runs: list[Any]) -> pd.DataFrame:
    rows = []
    for run in runs:
        tags = run.data.tags
        reason = (tags.get(schema.PRUNE_REASON_TAG) or tags.get(schema.FAIL_REASON_TAG)
                  or tags.get(schema.STOP_REASON_TAG) or "")  # fmt: skip
        row = {
            "run_id": run.info.run_id, "run_name": run.info.run_name,
            "run_status": run.info.status,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True),
            "trial_tag": tags.get(schema.TRIAL_NUMBER_TAG),
            "state_tag": tags.get(schema.TRIAL_STATE_TAG),
            "run_reason": reason, "resume_count": tags.get(schema.RESUME_COUNT_TAG),
            "device_name": tags.get("device_name"),
            "is_parent": schema.STUDY_KIND_TAG in tags,
        }  # fmt: skip
        row.update(run.data.params)
        row.update({f"final_{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "is_parent"])


def _runs_as_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Runs without a study: the state from the trial tag or else the run status."""
    df = df.copy()
    status = df.get("run_status", pd.Series(index=df.index, dtype=object))
    tag = df.get("state_tag", pd.Series(index=df.index, dtype=object))
    df.insert(0, "state", tag.fillna(status.map(RUN_STATES)).fillna("RUNNING"))
    df["state"] = pd.Categorical(df["state"], categories=STATES)
    df.insert(0, "trial", pd.to_numeric(df.get("trial_tag"), errors="coerce"))
    df["reason"] = df.get("run_reason", "")
    df["current"] = True
    df.attrs.update(objectives=[], directions=[], kind="runs", parent_run_id=None,
                    params=_varied(df))  # fmt: skip
    return df


def _varied(df: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between runs: what a runs report compares."""
    skip = {"seed", "device", "data"}
    candidates = [c for c in ("gamma", "lambda_k", "repeat", "filters", "lr", "seed") if c in df]
    return [c for c in candidates if df[c].nunique() > 1 and c not in skip] or (
        ["gamma"] if "gamma" in df else []
    )


def _wall_seconds(df: pd.DataFrame) -> pd.Series:
    """Trial duration, else the run's; a running trial counts up to now."""
    now = pd.Timestamp.now(tz="UTC")
    out = pd.Series(float("nan"), index=df.index)
    if "datetime_start" in df:
        start = pd.to_datetime(df["datetime_start"]).dt.tz_localize(None)
        end = pd.to_datetime(df["datetime_complete"]).dt.tz_localize(None)
        out = (end - start).dt.total_seconds()
    if "start_time" in df:
        run_end = df["end_time"].fillna(now)
        out = out.fillna((run_end - df["start_time"]).dt.total_seconds())
    return out


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """MLflow params are strings: numbers become numbers, "True"/"False" booleans."""
    attrs = dict(df.attrs)
    for column in df.columns:
        if df[column].dtype != object and not pd.api.types.is_string_dtype(df[column]):
            continue
        values = df[column]
        lowered = values.dropna().astype(str).str.lower()
        if len(lowered) and lowered.isin(["true", "false"]).all():
            df[column] = values.map(lambda v: None if pd.isna(v) else str(v).lower() == "true")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().sum() == values.notna().sum() and values.notna().any():
            df[column] = numbers
    for column in ("trial", "retry_of", "final_step"):
        if column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    df.attrs = attrs
    return df
