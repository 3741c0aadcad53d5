"""The MLflow side of a study: one parent run, one nested child run per trial, all
written through `began.tracking.MlflowTracker` (names in `studies.schema`).

The parent run carries the tag `study_name` and the study's settings as params; each
trial's run is its child with the tags `study_name` and `trial_number`, the whole
training record of a single run, and at the end its state, objective values and, if
it stopped early, the reason. When the study's command ends, the parent run gets the
table of trials and the best ones.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from began.tracking import MODEL_PREFIX_TAG, MlflowTracker, find_runs, mask_url
from studies.fleet.optuna_private import storage_of, trial_id_of
from studies.fleet.queue import is_retry
from studies.naming import description, point_of_trial, trial_name
from studies.schema import (
    BASE_CONFIG_FILE,
    BEST_PREFIX,
    BEST_RUN_TAG,
    BEST_TRIALS_MD,
    BEST_TRIALS_TAG,
    COLLAPSE_ATTR,
    CONTINUES_ATTR,
    DESCRIPTION_TAG,
    FAIL_REASON_TAG,
    FAILED_TRIAL_ATTR,
    OBJECTIVE_PREFIX,
    OBJECTIVES_ATTR,
    PACK_TAG,
    PARENT_RUN_ATTR,
    PRUNE_REASON_TAG,
    REASON_ATTR,
    RESEED_OF_TAG,
    RETRIED_AS_TAG,
    RUN_ID_ATTR,
    RUN_NAME_TAG,
    STUDY_KIND_TAG,
    STUDY_NAME_TAG,
    TRIAL_NUMBER_TAG,
    TRIAL_STATE_TAG,
    TRIALS_PREFIX,
    TRIALS_TABLE_CSV,
    TRIALS_TABLE_MD,
    final_metrics,
)
from studies.spec import GRID, StudySpec
from studies.tables import markdown_table

MAX_GRID_PARAM = 500  # characters of the grid as a param; past that its count (trials.csv has all)


def open_parent_run(spec: StudySpec, study: optuna.Study) -> MlflowTracker:
    """The study's parent run: created on the first run of the study, reopened after (also
    when the process that created it was killed before the study recorded it)."""
    tags = {STUDY_NAME_TAG: spec.study_name, STUDY_KIND_TAG: spec.kind}
    if spec.reseed_of is not None:
        tags[RESEED_OF_TAG] = spec.reseed_of.study
    known = study.user_attrs.get(PARENT_RUN_ATTR)
    if not known:
        created = find_runs(spec.tracking_uri, spec.experiment, tags)
        known = created[0][0] if created else None
    if known:
        parent = MlflowTracker(spec.tracking_uri, run_id=known, run_option="the study's run")
        parent.reopen()
        if study.user_attrs.get(PARENT_RUN_ATTR) == known:
            parent.set_tags({PACK_TAG: str(spec.pack)})  # may change from run to run
            return parent
    else:
        # A reseed's run nests under the run of the study it reseeds (same experiment).
        above = spec.reseed_of.parent_run_id if spec.reseed_of is not None else None
        parent = MlflowTracker(spec.tracking_uri, spec.experiment, spec.study_name, tags=tags,
                               parent_run_id=above)  # fmt: skip
        parent.create()
    params: dict[str, Any] = {
        "study_name": spec.study_name,
        "storage": mask_url(spec.storage),
        "space": spec.described,
        "objectives": ",".join(o.logged for o in spec.objectives),
        "directions": ",".join(spec.directions),
        "sampler": spec.sampler if spec.kind != GRID else "grid (queued)",
        "sampler_seed": spec.sampler_seed,
        "pruner": spec.pruner,
        "health_rule": str(spec.health),
        "trials": spec.total_trials if spec.total_trials is not None else "unbounded",
    }
    if spec.grid:
        points = " ".join("/".join(str(v) for v in p.values()) for p in spec.grid)
        params["grid"] = points if len(points) <= MAX_GRID_PARAM else f"{len(spec.grid)} points"
    if spec.reseed_of is not None:
        params |= {"reseed_of": spec.reseed_of.study, "ranked_by": spec.reseed_of.ranked_by}
    params |= {f"base.{k}": v for k, v in spec.base_config.to_dict().items()}
    parent.log_params(params)
    parent.log_text(spec.base_config.to_json(), BASE_CONFIG_FILE)
    parent.set_tags({PACK_TAG: str(spec.pack)})
    study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    return parent


def trial_tracker(
    spec: StudySpec, trial: optuna.Trial, parent_run_id: str, point: dict[str, Any]
) -> MlflowTracker:
    """The trial's run: its own from an earlier attempt (a retry continues it), or a new
    one, named for the trial and the `point` it trains (`studies.naming`)."""
    name = trial_name(trial.number, point, spec.named)
    tags = {STUDY_NAME_TAG: spec.study_name, TRIAL_NUMBER_TAG: str(trial.number),
            DESCRIPTION_TAG: description(name, spec.study_name, objectives_text(spec)),
            MODEL_PREFIX_TAG: f"{spec.study_name}-t{trial.number}"}  # fmt: skip
    earlier = trial.user_attrs.get(RUN_ID_ATTR) or _unrecorded_run(spec, trial)
    if earlier:
        tracker = MlflowTracker(spec.tracking_uri, run_id=earlier, run_option="trial run",
                                system_metrics=spec.system_metrics)  # fmt: skip
        # Renamed for the trial that now runs it, so that MLflow and Optuna agree on the
        # number; the name keeps the first trial's, which the run was created for.
        frozen = storage_of(trial.study).get_trial(trial_id_of(trial))
        first = frozen.system_attrs.get(FAILED_TRIAL_ATTR, trial.number)
        if first != trial.number:
            name += f" (first t{first})"
        tracker.set_tags({**tags, RETRIED_AS_TAG: str(trial.number), RUN_NAME_TAG: name})
        return tracker
    # Tagged as it is created: a kill before the trial records the run id leaves a run its
    # retry can still find (`_unrecorded_run`), not one left RUNNING for ever.
    tracker = MlflowTracker(spec.tracking_uri, spec.experiment, name, parent_run_id=parent_run_id,
                            tags=tags, system_metrics=spec.system_metrics)  # fmt: skip
    tracker.create()
    return tracker


def objectives_text(spec: StudySpec) -> str:
    """`diversity_gap (minimize)`: what a study's trials optimise, for descriptions."""
    return ", ".join(f"{o.logged} ({o.direction})" for o in spec.objectives)


def _unrecorded_run(spec: StudySpec, trial: optuna.Trial) -> str | None:
    """The run an earlier attempt of this retry created before it was killed, before the
    trial had recorded it; None for a first attempt."""
    trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    chain, earlier = set(), trials[trial.number].system_attrs.get(CONTINUES_ATTR)
    while earlier is not None and earlier not in chain:
        chain.add(earlier)
        earlier = trials[earlier].system_attrs.get(CONTINUES_ATTR)
    if not chain:
        return None
    runs = find_runs(spec.tracking_uri, spec.experiment, {STUDY_NAME_TAG: spec.study_name})
    for run_id, tags in runs:
        number = tags.get(TRIAL_NUMBER_TAG, "")
        if number.isdigit() and int(number) in chain and STUDY_KIND_TAG not in tags:
            return run_id  # (the parent run has a STUDY_KIND_TAG, trials' runs none)
    return None


def record_trial_end(
    tracker: MlflowTracker,
    state: TrialState,
    values: dict[str, float] | None,
    reason: str | None,
    step: int,
    description: str | None = None,
) -> None:
    """The trial's outcome on its run: state, objective values, why it stopped and, when
    given, the run's description with the outcome."""
    tags = {TRIAL_STATE_TAG: state.name}
    if description:
        tags[DESCRIPTION_TAG] = description
    if reason:
        tags[PRUNE_REASON_TAG if state == TrialState.PRUNED else FAIL_REASON_TAG] = reason
    tracker.set_tags(tags)
    if values:
        tracker.log_metrics({f"{OBJECTIVE_PREFIX}{k}": v for k, v in values.items()}, step)
        tracker.close()


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, retries included: what the parent run's table shows."""
    names = [str(n) for n in study.user_attrs.get(OBJECTIVES_ATTR, [])]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": trial.state.name,
            **{k: v for k, v in sorted(point_of_trial(trial).items())},
        }
        for i, name in enumerate(names):
            row[name] = trial.values[i] if trial.values is not None else None
        final = final_metrics(trial.user_attrs)
        row["diversity_ssim"] = final.get("diversity_ssim")
        row["seconds"] = (
            round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        row["retry_of"] = trial.system_attrs.get(FAILED_TRIAL_ATTR) if is_retry(trial) else None
        # Why it stopped, else the collapse warning of a trial that completed collapsed.
        row["reason"] = trial.user_attrs.get(REASON_ATTR) or trial.user_attrs.get(COLLAPSE_ATTR, "")
        row[RUN_ID_ATTR] = trial.user_attrs.get(RUN_ID_ATTR, "")
        rows.append(row)
    return rows


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several); [] before any completes."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return list(study.best_trials)


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def close_parent_run(
    spec: StudySpec, study: optuna.Study, parent: MlflowTracker, status: str
) -> None:
    """Write the trials table and the best trials into the parent run, then end it."""
    rows = trials_table(study)
    best = best_trials(study)
    best_numbers = {t.number for t in best}
    parent.log_text(markdown_table(rows) + "\n" if rows else "(no trials)\n", TRIALS_TABLE_MD)
    parent.log_text(_csv(rows) if rows else "", TRIALS_TABLE_CSV)
    best_rows = [row for row in rows if row["trial"] in best_numbers]
    parent.log_text(markdown_table(best_rows) + "\n" if best_rows else "(none yet)\n",
                    BEST_TRIALS_MD)  # fmt: skip
    tags = {BEST_TRIALS_TAG: ",".join(str(n) for n in sorted(best_numbers))}
    counts = {s.name: 0 for s in TrialState}
    for row in rows:
        counts[row["state"]] += 1
    metrics = {f"{TRIALS_PREFIX}{state.lower()}": n for state, n in counts.items()}
    if len(best) == 1:
        [trial] = best
        tags[BEST_RUN_TAG] = str(trial.user_attrs.get(RUN_ID_ATTR, ""))
        for objective, value in zip(spec.objectives, trial.values, strict=True):
            metrics[f"{BEST_PREFIX}{objective.logged}"] = float(value)
    parent.set_tags(tags)
    parent.log_metrics(metrics, 0)
    parent.finish(status)
