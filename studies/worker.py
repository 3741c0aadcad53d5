"""A worker process: take trials from the study until there are none left, run, tell.

Workers are processes, never threads: each has its own torch, its own device and
its own signal handling. A worker
- first fails stale trials (their worker died: the heartbeat stopped), which queues
  their retries;
- takes a queued trial (grid point or retry) if there is one; in a search, asks the
  sampler for a new one while fewer than --n-trials exist;
- otherwise waits while other trials still run (one may die and need a retry), and
  stops when nothing is queued or running.
Ctrl-C, SIGTERM, SIGHUP (a closed terminal) and the death of its parent process all stop
a worker the same way: it finishes the current step, checkpoints, marks the trial's
MLflow run KILLED and queues the trial to continue, so a rerun continues it from its
checkpoint. A trial another worker took over (this one's beats were lost) stops at once
and leaves the run to its retry.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from types import FrameType

import optuna
from optuna.trial import FrozenTrial, TrialState

from began.errors import first_line, one_line
from began.interrupts import STOP_SIGNALS, RunAbandoned, StopFlag
from began.loop import TrainingInterrupted
from began.retry import DEFAULT_ATTEMPTS
from began.tracking import FAILED, MlflowTracker
from studies.optuna_private import storage_of, trial_id_of
from studies.queue import (
    claim_queued_trial,
    continue_later,
    fail_stale_trials,
    heartbeat,
    heartbeat_of,
    is_retry,
    new_trial,
)
from studies.records import record_trial_end
from studies.retry import retrying
from studies.schema import ERROR_FILE, REASON_ATTR, RUN_ID_ATTR
from studies.spec import SEARCH, StudySpec
from studies.study import load_study
from studies.trial import run_trial

INTERRUPTED_EXIT = 130
# A worker with nothing to take looks again after at most this long (or half a heartbeat).
IDLE_POLL_S = 5.0
PARENT_POLL_S = 1.0  # how often a worker checks that its parent process still runs
WAIT = object()  # next_trial: nothing to take now, but a running trial may need a retry
_PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies


class StopRequest:
    """Set by a stop signal between trials (train() handles them during one)."""

    def __init__(self) -> None:
        self.requested = False

    def __bool__(self) -> bool:
        return self.requested

    def install(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.requested = True

        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)


def stop_with_parent() -> None:
    """SIGTERM this worker when its parent dies: a parent killed alone must not leave
    workers training on as orphans (a rerun would then run twice as many per device).
    Linux delivers it at once (prctl); elsewhere a thread notices within a second."""
    spawned_by = multiprocessing.parent_process()
    parent = spawned_by.pid if spawned_by is not None else os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(spec: StudySpec, index: int, device: str, threads: int, parent_run_id: str) -> None:
    """The entry point of a worker process (started by `studies.runner`)."""
    import torch

    torch.set_num_threads(threads)  # N workers on one CPU must not oversubscribe its cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"  # read when MLflow is first imported, below
    warnings.filterwarnings("ignore")  # a library's warning would scramble the study display
    stop = StopRequest()
    stop.install()
    stop_with_parent()
    try:
        study = load_study(spec, index)
        started = time.monotonic()
        failures = 0  # storage errors in a row
        while not stop:
            try:
                trial = next_trial(study, spec, started)
                failures = 0
            except Exception:
                # Never retried at once: a claim that committed before the error is now
                # RUNNING without its worker, and is retried as stale after the grace.
                failures += 1
                if failures >= DEFAULT_ATTEMPTS:
                    raise
                time.sleep(2.0**failures)
                continue
            if trial is None:
                break
            if trial is WAIT:
                time.sleep(min(IDLE_POLL_S, heartbeat_of(study, spec) / 2))
                continue
            assert isinstance(trial, optuna.Trial)
            if run_with_heartbeat(study, trial, spec, device, parent_run_id, stop):
                sys.exit(INTERRUPTED_EXIT)
    except Exception as error:  # the storage is gone for good: say so in one line
        print(f"worker {index}: stopped: {type(error).__name__}: {first_line(error)}; its running "
              "trial is retried from its checkpoint when the study runs again",
              file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(1)
    sys.exit(INTERRUPTED_EXIT if stop else 0)


def next_trial(study: optuna.Study, spec: StudySpec, started: float) -> optuna.Trial | object:
    fail_stale_trials(study, spec)  # a dead worker's trial becomes a queued retry
    trial = claim_queued_trial(study, spec)
    if trial is not None:
        return trial
    trials = study.get_trials(deepcopy=False)
    if spec.kind == SEARCH and _may_start_new(spec, trials, started):
        return new_trial(study, spec)
    if any(t.state == TrialState.RUNNING for t in trials):
        return WAIT
    return None


def _may_start_new(spec: StudySpec, trials: list[FrozenTrial], started: float) -> bool:
    if spec.timeout_s is not None and time.monotonic() - started > spec.timeout_s:
        return False
    trials_so_far = sum(1 for t in trials if not is_retry(t))  # a retry is not a new trial
    return spec.n_trials is None or trials_so_far < spec.n_trials


def run_with_heartbeat(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: StudySpec,
    device: str,
    parent_run_id: str,
    stop: StopRequest,
) -> bool:
    """Run and tell one trial while beating for it; True if interrupted."""
    taken_over = StopFlag()
    reason = "another worker failed it as stale (its heartbeats were lost); its retry continues"
    with heartbeat(study, trial, heartbeat_of(study, spec),
                   on_taken_over=lambda: taken_over.abandon(reason)):  # fmt: skip
        try:
            return run_and_tell(study, trial, spec, device, parent_run_id, stop, taken_over)
        except (RunAbandoned, optuna.exceptions.UpdateFinishedTrialError):
            print(f"trial {trial.number} stopped: {reason} the run",
                  file=sys.stderr, flush=True)  # fmt: skip
            return False


def run_and_tell(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: StudySpec,
    device: str,
    parent_run_id: str,
    stop: StopRequest,
    taken_over: StopFlag | None = None,
) -> bool:
    """Run one trial and record its outcome in Optuna and MLflow; True if interrupted."""
    try:
        if stop:
            raise TrainingInterrupted("stopped before the trial started")
        outcome = run_trial(trial, spec, device, parent_run_id, taken_over)
    except TrainingInterrupted:
        retrying(lambda: trial.set_user_attr(REASON_ATTR, "interrupted (stop signal)"))
        frozen = retrying(lambda: storage_of(study).get_trial(trial_id_of(trial)))
        # Queued to continue before it is marked FAIL: a second signal in between then
        # leaves a queued copy (or, before it, a RUNNING trial that becomes stale), never
        # a failed trial nobody continues.
        retrying(lambda: continue_later(study, frozen, crashed=False))
        retrying(lambda: _tell(study, trial, state=TrialState.FAIL))
        return True
    except (RunAbandoned, optuna.exceptions.UpdateFinishedTrialError):
        raise
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

    That happens when this worker's heartbeats stopped reaching the storage for the
    grace period (an overloaded database): another worker then failed the trial and
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
    """An exception fails this trial only: recorded with the error on the trial and its
    run (ended FAILED, with the traceback), and the study goes on."""
    reason = one_line(f"{type(error).__name__}: {error}")[:MAX_REASON_LENGTH]
    retrying(lambda: trial.set_user_attr(REASON_ATTR, reason))
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        try:
            tracker = MlflowTracker(spec.tracking_uri, run_id=run_id, run_option="trial run")
            record_trial_end(tracker, TrialState.FAIL, None, reason, 0)
            tracker.log_text(traceback.format_exc(), ERROR_FILE)
            tracker.finish(FAILED, error=reason)
        except Exception:
            pass  # the Optuna record below is the one that must be written
    retrying(lambda: _tell(study, trial, state=TrialState.FAIL))
    print(f"trial {trial.number} failed: {reason}", file=sys.stderr, flush=True)


def cpu_threads(cpu_workers: int) -> int:
    """Torch threads per CPU worker: the cores shared out, at least one each."""
    return max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
