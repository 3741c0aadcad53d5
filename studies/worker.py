"""A worker process: take trials from the study until there are none left, run, tell.

Workers are processes, never threads: each has its own torch, its own device and
its own signal handling. A worker
- first fails stale trials (their worker died: the heartbeat stopped), which queues
  their retries;
- takes a queued trial (grid point or retry) if there is one; in a search, asks the
  sampler for a new one while fewer than --n-trials exist;
- otherwise waits while other trials still run (one may die and need a retry), and
  stops when nothing is queued or running.
Ctrl-C (or SIGTERM) finishes the current step, checkpoints, marks the trial's MLflow
run KILLED and re-queues the trial, so a rerun continues it from its checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
import warnings
from types import FrameType

import optuna
from optuna.trial import FrozenTrial, TrialState

from began.errors import first_line, one_line
from began.loop import TrainingInterrupted
from began.tracking import MlflowTracker
from studies.optuna_private import storage_of, trial_id_of
from studies.queue import claim_queued_trial, heartbeat, is_retry, new_trial, requeue
from studies.records import record_trial_end
from studies.retry import retrying
from studies.schema import ERROR_FILE, REASON_ATTR, RUN_ID_ATTR
from studies.spec import SEARCH, StudySpec
from studies.study import load_study
from studies.trial import run_trial

INTERRUPTED_EXIT = 130
# A worker with nothing to take looks again after at most this long (or half a heartbeat).
IDLE_POLL_S = 5.0
_WAIT = object()  # next_trial: nothing to take now, but a running trial may need a retry


class _StopRequest:
    """Set by SIGINT/SIGTERM between trials (train() handles them during one)."""

    def __init__(self) -> None:
        self.requested = False

    def __bool__(self) -> bool:
        return self.requested

    def install(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)


def worker_main(spec: StudySpec, index: int, device: str, threads: int, parent_run_id: str) -> None:
    """The entry point of a worker process (started by `studies.runner`)."""
    import torch

    torch.set_num_threads(threads)  # N workers on one CPU must not oversubscribe its cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"  # read when MLflow is first imported, below
    warnings.filterwarnings("ignore")  # a library's warning would scramble the study display
    stop = _StopRequest()
    stop.install()
    try:
        study = load_study(spec, index)
        started = time.monotonic()
        while not stop:
            trial = retrying(lambda: next_trial(study, spec, started))
            if trial is None:
                break
            if trial is _WAIT:
                time.sleep(min(IDLE_POLL_S, spec.heartbeat_s / 2))
                continue
            assert isinstance(trial, optuna.Trial)
            with heartbeat(study, trial, spec.heartbeat_s):
                try:
                    interrupted = run_and_tell(study, trial, spec, device, parent_run_id, stop)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # Failed as stale by another worker while this one ran it (its beats
                    # did not reach the database): the queued retry reports it.
                    print(f"trial {trial.number} was finished elsewhere meanwhile; its retry "
                          "will report it", file=sys.stderr, flush=True)  # fmt: skip
                    interrupted = False
            if interrupted:
                sys.exit(INTERRUPTED_EXIT)
    except Exception as error:  # the storage is gone for good: say so in one line
        print(f"worker {index}: stopped: {type(error).__name__}: {first_line(error)}; its running "
              "trial is retried from its checkpoint when the study runs again",
              file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(1)
    sys.exit(INTERRUPTED_EXIT if stop else 0)


def next_trial(study: optuna.Study, spec: StudySpec, started: float) -> optuna.Trial | object:
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial becomes a queued retry
    trial = claim_queued_trial(study, spec)
    if trial is not None:
        return trial
    trials = study.get_trials(deepcopy=False)
    if spec.kind == SEARCH and _may_start_new(spec, trials, started):
        return new_trial(study, spec)
    if any(t.state == TrialState.RUNNING for t in trials):
        return _WAIT
    return None


def _may_start_new(spec: StudySpec, trials: list[FrozenTrial], started: float) -> bool:
    if spec.timeout_s is not None and time.monotonic() - started > spec.timeout_s:
        return False
    trials_so_far = sum(1 for t in trials if not is_retry(t))  # a retry is not a new trial
    return spec.n_trials is None or trials_so_far < spec.n_trials


def run_and_tell(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: StudySpec,
    device: str,
    parent_run_id: str,
    stop: _StopRequest,
) -> bool:
    """Run one trial and record its outcome in Optuna and MLflow; True if interrupted."""
    try:
        if stop:
            raise TrainingInterrupted("stopped before the trial started")
        outcome = run_trial(trial, spec, device, parent_run_id)
    except TrainingInterrupted:
        retrying(lambda: trial.set_user_attr(REASON_ATTR, "interrupted (Ctrl-C or SIGTERM)"))
        if retrying(lambda: _tell(study, trial, state=TrialState.FAIL)):
            retrying(lambda: requeue(study, storage_of(study).get_trial(trial_id_of(trial))))
        return True
    except Exception as error:
        _fail(study, trial, spec, error)
        return False
    if outcome.reason:
        retrying(lambda: trial.set_user_attr(REASON_ATTR, outcome.reason))
    values = None
    if outcome.values is not None:
        values = {o.logged: v for o, v in zip(spec.objectives, outcome.values, strict=True)}
    record_trial_end(outcome.tracker, outcome.state, values, outcome.reason, outcome.step)
    if outcome.state == TrialState.COMPLETE:
        retrying(lambda: _tell(study, trial, values=outcome.values))
    else:
        retrying(lambda: _tell(study, trial, state=outcome.state))
    return False


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    values: list[float] | None = None,
    state: TrialState | None = None,
) -> bool:
    """Tell Optuna the outcome; False when the trial was already failed as stale.

    That happens when this worker's heartbeats stopped reaching the storage for two
    intervals (an overloaded database): another worker then failed the trial and
    queued its retry, which continues the same MLflow run and finds it complete.
    """
    if storage_of(study).get_trial(trial_id_of(trial)).state.is_finished():
        print(f"trial {trial.number} was failed as stale meanwhile; its retry will report it",
              file=sys.stderr, flush=True)  # fmt: skip
        return False
    study.tell(trial, values, state=state)
    return True


# A failure reason is read in tables and trial lists: its first thousand characters say it.
MAX_REASON_LENGTH = 1000


def _fail(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, error: Exception) -> None:
    """An exception fails this trial only: recorded with the error, the study goes on."""
    reason = one_line(f"{type(error).__name__}: {error}")[:MAX_REASON_LENGTH]
    retrying(lambda: trial.set_user_attr(REASON_ATTR, reason))
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        try:
            tracker = MlflowTracker(spec.tracking_uri, run_id=run_id, run_option="trial run")
            record_trial_end(tracker, TrialState.FAIL, None, reason, 0)
            tracker.log_text(traceback.format_exc(), ERROR_FILE)
            tracker.close()
        except Exception:
            pass  # the Optuna record below is the one that must be written
    retrying(lambda: _tell(study, trial, state=TrialState.FAIL))
    print(f"trial {trial.number} failed: {reason}", file=sys.stderr, flush=True)


def cpu_threads(cpu_workers: int) -> int:
    """Torch threads per CPU worker: the cores shared out, at least one each."""
    return max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
