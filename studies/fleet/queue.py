"""The trial queue of a study: taking a queued trial (a grid point or a retry), asking the
sampler for a new one, queueing a stopped trial to continue, retrying the trials of dead
workers, and the heartbeats that tell the other workers a trial is alive.

The rules that keep a trial from being lost, run twice or left hanging:
- a claim writes the trial's first heartbeat at once, and a RUNNING trial that has no
  heartbeat is stale once its claim is older than the grace period (a worker killed
  between the two would otherwise leave it RUNNING for ever);
- a claim is never retried blindly: one that fails after it committed becomes stale;
- stale trials are retried under the same claim lock, on every database: two workers
  (or hosts) that both found one trial stale would both queue its retry;
- a stopped trial is queued to continue *before* it is marked FAIL, and a trial is never
  queued to continue twice, so a second signal between the two loses nothing and doubles
  nothing;
- only crashes count against `--max-retries`; a Ctrl-C or a preemption is no failure.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from studies.fleet.connection import claim_lock
from studies.fleet.optuna_private import (
    pop_waiting_trial_id,
    stale_trial_ids,
    storage_of,
    trial_id_of,
)
from studies.schema import CONTINUES_ATTR, FAILED_TRIAL_ATTR, HEARTBEAT_ATTR, RETRY_HISTORY_ATTR
from studies.spec import StudySpec

# A trial is stale after this many heartbeat intervals without a beat: one beat lost to
# a busy database must not fail a live trial.
GRACE_BEATS = 3


def stale_after_s(heartbeat_s: float) -> float:
    """How long a RUNNING trial may go without a heartbeat before it is failed as stale
    (its worker died) and queued to continue."""
    return GRACE_BEATS * heartbeat_s


def is_retry(trial: FrozenTrial) -> bool:
    """A queued copy of an earlier trial (its worker died, or Ctrl-C stopped it)."""
    return FAILED_TRIAL_ATTR in trial.system_attrs


def heartbeat_of(study: optuna.Study, spec: StudySpec) -> int:
    """The study's heartbeat interval, as its first command set it: every host beats and
    judges staleness by the same one, whatever its own --heartbeat says."""
    return int(study.user_attrs.get(HEARTBEAT_ATTR, spec.heartbeat_s))


def claim_queued_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """Take a WAITING trial (a grid point or a retry), mark it RUNNING and beat for it
    once, or None.

    Study.ask would sample a brand-new trial when the queue is empty; a grid sweep
    must never do that (two workers could then run one point twice), so the queue
    is read directly, under `claim_lock`: two workers never claim the same trial.
    """
    with claim_lock(spec):
        trial_id = pop_waiting_trial_id(study)
        if trial_id is not None:
            storage_of(study).record_heartbeat(trial_id)
    return None if trial_id is None else optuna.Trial(study, trial_id)


def new_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial:
    """A fresh trial for the sampler to fill (search studies), with its first beat."""
    with claim_lock(spec), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
        trial = study.ask()
        storage_of(study).record_heartbeat(trial_id_of(trial))
    return trial


def retry_stale_trials(study: optuna.Study, spec: StudySpec) -> list[int]:
    """Queue a retry of each RUNNING trial no worker runs any more (a crash: it counts
    against `spec.max_retries`), then fail the trial. Returns the failed trials' storage
    ids. Optuna's `fail_stale_trials` only fails them: the retry continuing the trial's
    run from its checkpoint is this project's."""
    storage = storage_of(study)
    grace_s = stale_after_s(heartbeat_of(study, spec))
    failed = []
    with claim_lock(spec):
        for trial_id in stale_trial_ids(study, grace_s):
            continue_later(study, storage.get_trial(trial_id), crashed=True,
                           max_retries=spec.max_retries)  # fmt: skip
            with contextlib.suppress(UpdateFinishedTrialError):  # finished meanwhile
                if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    failed.append(trial_id)
    return failed


def continue_later(
    study: optuna.Study, trial: FrozenTrial, crashed: bool, max_retries: int | None = None
) -> bool:
    """Queue a copy of `trial` to run again, continuing its MLflow run from its checkpoint
    (`mlflow_run_id` is among the user attributes it keeps); False if not queued.

    Never twice for one trial (a second call finds the first copy). A crash extends
    `retry_history`, and after `max_retries` of them the trial is not queued again; a
    stop (Ctrl-C, SIGTERM, a lost parent) does not. `failed_trial` is the first trial of
    the chain, as in Optuna's RetryHeartbeatStaleTrialCallback.
    """
    others = study.get_trials(deepcopy=False)
    if any(t.system_attrs.get(CONTINUES_ATTR) == trial.number for t in others):
        return False
    history = list(trial.system_attrs.get(RETRY_HISTORY_ATTR, []))
    if crashed:
        history.append(trial.number)
        if max_retries is not None and len(history) > max_retries:
            return False
    system_attrs = {
        **trial.system_attrs,
        FAILED_TRIAL_ATTR: trial.system_attrs.get(FAILED_TRIAL_ATTR, trial.number),
        CONTINUES_ATTR: trial.number,
        RETRY_HISTORY_ATTR: history,
    }
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=system_attrs,
        )
    )
    return True


class Heartbeats:
    """One thread that beats for every trial a worker holds (a pack holds several), as
    Study.optimize does for its one trial.

    Unlike Optuna's own thread, a failed beat (the database restarting) does not end the
    thread: it beats again at the next interval, so a short outage does not make a
    healthy trial look dead to the other workers. When a beat finds a trial finished
    (another worker failed it as stale and queued its retry), that trial's
    `on_taken_over` is called once and it is no longer beaten for: the trial and its run
    belong to the retry now.
    """

    def __init__(self, study: optuna.Study, interval_s: float) -> None:
        self.storage = storage_of(study)
        self.interval_s = interval_s
        self._held: dict[int, Callable[[], None]] = {}  # trial id -> on_taken_over
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeats", daemon=True)
        self._thread.start()

    def add(self, trial: optuna.Trial, on_taken_over: Callable[[], None]) -> None:
        with self._lock:
            self._held[trial_id_of(trial)] = on_taken_over

    def remove(self, trial: optuna.Trial) -> None:
        self.remove_id(trial_id_of(trial))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                held = dict(self._held)
            for trial_id, on_taken_over in held.items():
                with contextlib.suppress(Exception):
                    if self.storage.get_trial(trial_id).state.is_finished():
                        self.remove_id(trial_id)
                        on_taken_over()
                    else:
                        self.storage.record_heartbeat(trial_id)

    def remove_id(self, trial_id: int) -> None:
        with self._lock:
            self._held.pop(trial_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
