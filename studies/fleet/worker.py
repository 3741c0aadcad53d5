"""A worker process: take trials from the study until there are none left, run, tell.

Workers are processes, never threads: each has its own torch, its own device and
its own signal handling. A worker trains up to --pack trials at once (one model where
they share a shape: `began.training.pack`), and
- first retries stale trials (their worker died: the heartbeat stopped): each is
  queued to continue, then failed;
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

import optuna
from optuna.trial import FrozenTrial, TrialState

from began.errors import first_line, one_line
from began.machine import usable_cpus
from began.retry import RETRY_WAITS_S
from began.tracking import FAILED, MlflowTracker
from began.training.interrupts import RunAbandoned, StopFlag, deferred_interrupts
from began.training.loop import (
    DataCache,
    OpenRun,
    PackOutOfMemory,
    TrainingInterrupted,
    TrainResult,
)
from studies.fleet.optuna_private import storage_of, trial_id_of
from studies.fleet.queue import (
    Heartbeats,
    claim_queued_trial,
    continue_later,
    fixed_params,
    given_up_reason,
    heartbeat_of,
    is_retry,
    new_trial,
    retry_stale_trials,
)
from studies.fleet.scheduler import train_runs
from studies.fleet.storage import load_study, make_sampler
from studies.progress import name_of
from studies.pruning import retrying_unless_finished
from studies.records import record_trial_end
from studies.schema import CONTINUES_ATTR, ERROR_FILE, GIVEN_UP_TAG, REASON_ATTR, RUN_ID_ATTR
from studies.spec import SEARCH, StudySpec
from studies.trial import StartedTrial, start_trial, trial_outcome

INTERRUPTED_EXIT = 130
TAKEN_OVER = "another worker failed it as stale (its heartbeats were lost)"
# A worker with nothing to take looks again after at most this long (or half a heartbeat).
IDLE_POLL_S = 5.0
PARENT_POLL_S = 1.0  # how often a worker checks that its parent process still runs
WAIT = object()  # next_trial: nothing to take now, but a running trial may need a retry
_PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies


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
    """The entry point of a worker process (started by `studies.fleet.runner`)."""
    import torch

    from began.training.device import use_cuda_device

    use_cuda_device(torch.device(device))  # before any CUDA work, so none of it lands on GPU 0
    torch.set_num_threads(threads)  # N workers on one CPU must not oversubscribe its cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"  # read when MLflow is first imported, below
    warnings.filterwarnings("ignore")  # a library's warning would scramble the study display
    stop = StopFlag()
    try:
        with deferred_interrupts(stop):  # a stop signal sets `stop`; training stops between steps
            stop_with_parent()
            worker = Worker(load_study(spec), spec, device, parent_run_id, stop)
            code = worker.run()
    except KeyboardInterrupt:  # a second Ctrl-C: its trials are retried as stale
        sys.exit(INTERRUPTED_EXIT)
    except Exception as error:  # the storage is gone for good: say so in one line
        print(f"worker {index}: stopped: {type(error).__name__}: {first_line(error)}; its running "
              "trials are retried from their checkpoints when the study runs again",
              file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(1)
    sys.exit(code)


class Worker:
    """Takes trials and trains up to `spec.pack` of them at once (as one model where they
    share a shape), refilling a slot as soon as a trial ends, until nothing is left."""

    def __init__(
        self, study: optuna.Study, spec: StudySpec, device: str, parent_run_id: str,
        stop: StopFlag,
    ) -> None:  # fmt: skip
        self.study, self.spec, self.device = study, spec, device
        self.parent_run_id, self.stop = parent_run_id, stop
        self.heartbeat_s = heartbeat_of(study, spec)
        self.beats = Heartbeats(study, self.heartbeat_s)
        self.data = DataCache()  # the trials of a pack share one copy of the images
        self.held: dict[int, StartedTrial] = {}  # id(OpenRun) -> its trial
        self.start_time = time.monotonic()  # a search's --timeout counts from here
        self.next_look = 0.0  # when a busy worker next asks the storage for a trial
        self.nothing_left = False
        self.interrupted = False
        self.failures = 0  # storage errors in a row
        self.pack = spec.pack  # halved when a pack runs out of device memory
        self.last_out_of_memory: PackOutOfMemory | None = None

    def run(self) -> int:
        try:
            while not self.stop and not self.nothing_left:
                runs = self.take(0)
                if runs:
                    train_runs(runs, self.stop, self.on_end, more=self.take)
                elif not self.nothing_left:
                    time.sleep(min(IDLE_POLL_S, self.heartbeat_s / 2))
        finally:
            self.beats.close()
        return INTERRUPTED_EXIT if self.stop or self.interrupted else 0

    def take(self, running: int) -> list[OpenRun]:
        """Open trials for the free slots; a busy worker asks the storage only now and
        then, or at once when a slot has just come free."""
        opened: list[OpenRun] = []
        if running and time.monotonic() < self.next_look:
            return opened
        while running + len(opened) < self.pack and not self.stop:
            trial = self.next()
            if not isinstance(trial, optuna.Trial):
                self.nothing_left = trial is None and not running and not opened
                self.next_look = time.monotonic() + IDLE_POLL_S
                break
            run = self.start(trial)
            if run is not None:
                opened.append(run)
        return opened

    def next(self) -> optuna.Trial | object | None:
        try:
            trial = next_trial(self.study, self.spec, self.start_time)
        except Exception:
            # Never retried at once: a claim that committed before the error is RUNNING
            # without its worker now (it is retried as stale after the grace), and a
            # storage that just failed needs time to come back. So the next look waits as
            # a store request's retry does (`began.retry`), and a storage still failing
            # after all of those waits stops the worker.
            self.failures += 1
            if self.failures > len(RETRY_WAITS_S):
                raise
            time.sleep(RETRY_WAITS_S[self.failures - 1])
            return WAIT
        self.failures = 0
        return trial

    def start(self, trial: optuna.Trial) -> OpenRun | None:
        """The trial's run, opened; None when it needs no training (failed to start, or
        complete already: then it is told here)."""
        try:
            fixed = fixed_params(trial, self.spec)
            started = start_trial(trial, self.spec, self.device, self.parent_run_id, self.data,
                                  signals=self.stop, fixed=fixed)  # fmt: skip
        except (RunAbandoned, optuna.exceptions.UpdateFinishedTrialError):
            _taken_over(trial)
            return None
        except TrainingInterrupted:  # a stop signal came while the trial was being opened
            stop_trial(self.study, trial)
            self.interrupted = True
            return None
        except Exception as error:
            _fail(self.study, trial, self.spec, error)
            return None
        if started.run is None:
            assert started.result is not None
            self.finish(started, started.result)
            return None
        self.held[id(started.run)] = started
        self.beats.add(trial, lambda: started.flag.abandon(TAKEN_OVER))
        _say_what_continues(self.study, trial, started)
        return started.run

    def on_end(self, run: OpenRun, outcome: TrainResult | BaseException) -> None:
        started = self.held.pop(id(run))
        self.beats.remove(started.trial)
        self.next_look = 0.0  # a slot came free: refill it at the next step
        self.finish(started, outcome)

    def finish(self, started: StartedTrial, ended: TrainResult | BaseException) -> None:
        """Tell Optuna and the trial's run how the trial ended."""
        study, trial, spec = self.study, started.trial, self.spec
        if isinstance(ended, TrainingInterrupted):
            stop_trial(study, trial)
            self.interrupted = True
            return
        if isinstance(ended, PackOutOfMemory):  # not the trial's fault: no retry used
            if ended is not self.last_out_of_memory:  # once per pack, not once per trial
                self.last_out_of_memory = ended
                self.pack = max(1, self.pack // 2)
                print(f"{started.name}: {ended}; this worker now packs {self.pack}",
                      file=sys.stderr, flush=True)  # fmt: skip
            stop_trial(study, trial, reason=f"{ended}")
            return
        if isinstance(ended, RunAbandoned | optuna.exceptions.UpdateFinishedTrialError):
            _taken_over(trial)
            return
        try:
            outcome = trial_outcome(started, spec, ended)
        except Exception as error:
            _fail(study, trial, spec, error)
            return
        if outcome.reason:
            retrying_unless_finished(lambda: trial.set_user_attr(REASON_ATTR, outcome.reason))
        values = None
        if outcome.values is not None:
            values = {o.logged: v for o, v in zip(spec.objectives, outcome.values, strict=True)}
        record_trial_end(outcome.tracker, outcome.state, values, outcome.reason, outcome.step,
                         outcome.description)  # fmt: skip
        if outcome.state == TrialState.COMPLETE:
            retrying_unless_finished(lambda: _tell(study, trial, values=outcome.values))
        else:
            retrying_unless_finished(lambda: _tell(study, trial, state=outcome.state))


def stop_trial(
    study: optuna.Study, trial: optuna.Trial, reason: str = "interrupted (stop signal)"
) -> None:
    """A trial stopped by a signal (checkpointed, its run KILLED), or by a pack out of
    memory (its last checkpoint kept): queued to continue, then marked FAIL. In that
    order: a second signal in between then leaves a queued copy
    (or, before it, a RUNNING trial that becomes stale), never a failed trial nobody
    continues; and continue_later never queues one trial twice."""
    retrying_unless_finished(lambda: trial.set_user_attr(REASON_ATTR, reason))
    frozen = retrying_unless_finished(lambda: storage_of(study).get_trial(trial_id_of(trial)))
    retrying_unless_finished(lambda: continue_later(study, frozen, crashed=False))
    retrying_unless_finished(lambda: _tell(study, trial, state=TrialState.FAIL))


def _say_what_continues(study: optuna.Study, trial: optuna.Trial, started: StartedTrial) -> None:
    """`t10 gamma=0.5 continues t4 from step 120, run ...`: a resume says what it resumes."""
    frozen = storage_of(study).get_trial(trial_id_of(trial))
    continues = frozen.system_attrs.get(CONTINUES_ATTR)
    if continues is not None and started.run is not None:
        step = started.run.learner.state.step
        print(f"{started.name} continues t{continues} from step {step}, run "
              f"{started.tracker.run_id}", flush=True)  # fmt: skip


def _taken_over(trial: optuna.Trial) -> None:
    print(f"trial {trial.number} stopped: {TAKEN_OVER}; its retry continues the run",
          file=sys.stderr, flush=True)  # fmt: skip


def next_trial(study: optuna.Study, spec: StudySpec, start_time: float) -> optuna.Trial | object:
    for trial in retry_stale_trials(study, spec):  # a dead worker's trial: a queued retry
        end_given_up_run(spec, trial)  # ... unless it died too often without progress
    trial = claim_queued_trial(study, spec)
    if trial is not None:
        return trial
    trials = study.get_trials(deepcopy=False)
    if spec.kind == SEARCH and _may_start_new(spec, trials, start_time):
        return new_trial(study, spec, lambda stream: make_sampler(spec, stream))
    if any(t.state == TrialState.RUNNING for t in trials):
        return WAIT
    return None


def _may_start_new(spec: StudySpec, trials: list[FrozenTrial], start_time: float) -> bool:
    if spec.timeout_s is not None and time.monotonic() - start_time > spec.timeout_s:
        return False
    trials_so_far = sum(1 for t in trials if not is_retry(t))  # a retry is not a new trial
    return spec.n_trials is None or trials_so_far < spec.n_trials


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
    try:
        retrying_unless_finished(lambda: trial.set_user_attr(REASON_ATTR, reason))
    except optuna.exceptions.UpdateFinishedTrialError:
        _taken_over(trial)  # failed as stale meanwhile: the trial and its run are the retry's
        return
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        try:
            tracker = MlflowTracker(spec.tracking_uri, run_id=run_id, run_option="trial run")
            record_trial_end(tracker, TrialState.FAIL, None, reason, 0)
            tracker.log_text(traceback.format_exc(), ERROR_FILE)
            tracker.finish(FAILED, error=reason)
        except Exception:
            pass  # the Optuna record below is the one that must be written
    retrying_unless_finished(lambda: _tell(study, trial, state=TrialState.FAIL))
    print(f"trial {trial.number} failed: {reason}", file=sys.stderr, flush=True)


def end_given_up_run(spec: StudySpec, trial: FrozenTrial) -> None:
    """A trial given up: its run ends FAILED with why (no process trains it any more, so
    it must not stay RUNNING), and the worker says so."""
    reason = given_up_reason(trial)
    print(f"{name_of(spec, trial)} {reason}; the same command "
          "again tries it again", file=sys.stderr, flush=True)  # fmt: skip
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return
    try:
        tracker = MlflowTracker(spec.tracking_uri, run_id=run_id, run_option="trial run")
        record_trial_end(tracker, TrialState.FAIL, None, reason, 0)
        tracker.set_tags({GIVEN_UP_TAG: reason})
        tracker.finish(FAILED, error=reason)
    except Exception as error:  # the Optuna record holds it; the report shows either
        print(f"trial {trial.number}: could not end its run {run_id}: {first_line(error)}",
              file=sys.stderr, flush=True)  # fmt: skip


def cpu_threads(cpu_workers: int) -> int:
    """Torch threads per CPU worker: the cores shared out, at least one each."""
    return max(1, usable_cpus() // max(1, cpu_workers))
