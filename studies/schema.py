"""The names of a study's records: every attribute, tag, metric prefix and file that
`studies/` writes and `analysis/` and `bench/` read. Each name is defined here once;
a rename here changes writer and readers together.

Where the records live:
- the Optuna study: study user attributes (`*_ATTR` below, "study"), trial user
  attributes ("trial") and Optuna's own retry bookkeeping in trial system attributes;
- MLflow: the study's parent run (tags, params, artifacts, `best_*` and `trials_*`
  metrics) and one child run per trial (tags, `objective_*` metrics), beside what every
  training run records (`began.training.recorder`, `began.tracking`, `began.training.provenance`).
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from began.tracking import ERROR_TAG as ERROR_TAG
from began.tracking import PARENT_RUN_TAG as PARENT_RUN_TAG  # MLflow's own nesting tag
from began.tracking import RESUME_COUNT_TAG as RESUME_COUNT_TAG

# Tags every training run writes, which the reports read too (re-exported: readers look here).
from began.training.recorder import STOP_REASON_TAG as STOP_REASON_TAG

# --- Optuna: the study's user attributes ------------------------------------------------
OBJECTIVES_ATTR = "objectives"  # logged names of the objectives, in order
BASE_CONFIG_ATTR = "base_config"  # TrainConfig.to_dict() every trial derives from
PARENT_RUN_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment"
KIND_ATTR = "kind"  # GRID or SEARCH (studies.spec)
SPACE_ATTR = "space"  # what the study varies, as the user gave it: "gamma=0.3,0.5 seed=0"
SLURM_JOBS_ATTR = "slurm_jobs"  # the Slurm jobs `--launch slurm` submitted for the study
RESEED_OF_ATTR = "reseed_of"  # a reseed study: studies.spec.ReseedOf.to_dict()
HEARTBEAT_ATTR = "heartbeat_s"  # the interval every host beats at and judges staleness by

# --- Optuna: a trial's user attributes --------------------------------------------------
RUN_ID_ATTR = "mlflow_run_id"  # the trial's MLflow run, set before training starts
REASON_ATTR = "reason"  # why it was pruned or failed
# The final evaluation, one attribute per value: final_step, final_m_global (the mean
# M_global of the last window), final_<metric> for each quality metric; read them with
# `final_metrics`. Values are rounded to FINAL_DIGITS significant digits for display (the
# runs' metrics hold them exactly).
FINAL_PREFIX = "final_"
FINAL_DIGITS = 5
FINAL_ATTR = "final_metrics"  # older studies: all of them in one dict
COLLAPSE_ATTR = "collapse"  # collapse or near collapse in a few words (collapse_flag)
LAST_EVALUATION_ATTR = "last_evaluation"  # the latest evaluation, updated while it runs
WORKER_ATTR = "worker"  # who runs the trial's latest attempt: host:pid, and its Slurm task
START_STEP_ATTR = "start_step"  # the checkpoint step this attempt's run started from
GIVEN_UP_ATTR = "given_up"  # on the last attempt of a trial given up: why
SEED_ATTR = "seed"  # a grid point's training seed (queued with the point, not searched)
FINAL_STEP = "step"
FINAL_M_GLOBAL = "m_global"  # the mean M_global of the last evaluation window


def rounded(value: float) -> float:
    """A value as a trial attribute shows it: FINAL_DIGITS significant digits."""
    return float(f"{value:.{FINAL_DIGITS}g}")


def final_metrics(user_attrs: dict[str, Any]) -> dict[str, float]:
    """A trial's final evaluation {FINAL_STEP, FINAL_M_GLOBAL, metric: value}, {} when it
    has none: from its per-value attributes, or an older study's one dict."""
    found = {k.removeprefix(FINAL_PREFIX): v for k, v in user_attrs.items()
             if k.startswith(FINAL_PREFIX) and isinstance(v, int | float)}  # fmt: skip
    return found or dict(user_attrs.get(FINAL_ATTR) or {})


# --- Optuna: a trial's system attributes (Optuna's retry bookkeeping) ---------------------
FAILED_TRIAL_ATTR = "failed_trial"  # on a retry: the first trial of its chain
RETRY_HISTORY_ATTR = "retry_history"  # on a retry: the attempts that crashed from STUCK_STEP
STUCK_STEP_ATTR = "stuck_at_step"  # on a retry: the checkpoint step those crashes started from
CONTINUES_ATTR = "continues_trial"  # on a retry: the trial it continues (crashed or stopped)
FIXED_PARAMS_ATTR = "fixed_params"  # on a queued trial: the params it was queued with

# --- Trial states, by name (as Optuna and the runs' tags spell them) ----------------------
COMPLETE, PRUNED, FAIL = TrialState.COMPLETE.name, TrialState.PRUNED.name, TrialState.FAIL.name
RUNNING, WAITING = TrialState.RUNNING.name, TrialState.WAITING.name
STATES = (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)

# --- MLflow: tags ---------------------------------------------------------------------
STUDY_NAME_TAG = "study_name"  # on the parent run and every trial's run
STUDY_KIND_TAG = "study_kind"  # on the parent run only: how a reader tells it apart
TRIAL_NUMBER_TAG = "trial_number"
TRIAL_STATE_TAG = "trial_state"
PRUNE_REASON_TAG = "prune_reason"
FAIL_REASON_TAG = "fail_reason"
GIVEN_UP_TAG = "given_up"  # on the run of a trial given up: why
RUN_NAME_TAG = "mlflow.runName"  # MLflow's own: setting it renames the run
DESCRIPTION_TAG = "mlflow.note.content"  # MLflow's own: the run's description
RETRIED_AS_TAG = "retried_as_trial"  # the trial that continued this run after a retry
BEST_TRIALS_TAG = "best_trials"  # on the parent run: the best trial numbers
BEST_RUN_TAG = "best_run_id"  # on the parent run, single objective: the best trial's run
PACK_TAG = "pack"  # on the parent run: trials a worker trained at once in its last run
SLURM_JOB_TAG = "slurm_jobs"  # on the parent run: the Slurm jobs submitted for the study
RESEED_OF_TAG = "reseed_of"  # on a reseed study's parent run: the study it reseeds
COLLAPSE_WARNING_TAG = "collapse_warning"  # on a trial's run: studies.collapse.collapse_warning

# --- MLflow: metric prefixes ----------------------------------------------------------
OBJECTIVE_PREFIX = "objective_"  # on a trial's run: objective_<logged name>
BEST_PREFIX = "best_"  # on the parent run: best_<logged name>
TRIALS_PREFIX = "trials_"  # on the parent run: trials_<state>, counts

# --- MLflow: the parent run's artifacts -------------------------------------------------
TRIALS_TABLE_MD = "trials.md"
TRIALS_TABLE_CSV = "trials.csv"
BEST_TRIALS_MD = "best_trials.md"
BASE_CONFIG_FILE = "base_config.json"
REPORT_FOLDER = "report"  # analysis.report logs the report here
ERROR_FILE = "error.txt"  # on a failed trial's run: the traceback
