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
- only crashes without progress count against `--max-retries`: a Ctrl-C is no failure,
  and a killed machine whose trial had written a newer checkpoint is an interruption.
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
from studies.schema import (
    CONTINUES_ATTR,
    FAILED_TRIAL_ATTR,
    FIXED_PARAMS_ATTR,
    GIVEN_UP_ATTR,
    HEARTBEAT_ATTR,
    REASON_ATTR,
    RETRY_HISTORY_ATTR,
    RUN_ID_ATTR,
    START_STEP_ATTR,
    STUCK_STEP_ATTR,
)
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


def new_trial(
    study: optuna.Study, spec: StudySpec, sampler_for: Callable[[int], optuna.samplers.BaseSampler]
) -> optuna.Trial:
    """A fresh trial for the sampler to fill (search studies), with its first beat. The
    sampler is `sampler_for(trials so far)`: under the claim lock no two new trials see
    the same count, so no two draw from the same random stream, whichever host asks."""
    with claim_lock(spec), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
        study.sampler = sampler_for(len(study.get_trials(deepcopy=False)))
        trial = study.ask()
        storage_of(study).record_heartbeat(trial_id_of(trial))
    return trial


def retry_stale_trials(study: optuna.Study, spec: StudySpec) -> list[FrozenTrial]:
    """Queue a retry of each RUNNING trial no worker runs any more (its worker, or its
    machine, died), then fail the trial; returns the trials given up instead (attempts
    that died `spec.max_retries` + 1 times from one checkpoint: `continue_later`).
    Optuna's `fail_stale_trials` only fails them: the retry continuing the trial's run
    from its checkpoint is this project's."""
    storage = storage_of(study)
    grace_s = stale_after_s(heartbeat_of(study, spec))
    given_up = []
    with claim_lock(spec):
        for trial_id in stale_trial_ids(study, grace_s):
            trial = storage.get_trial(trial_id)
            queued = continue_later(study, trial, crashed=True, max_retries=spec.max_retries)
            gives_up = not queued and not is_continued(trial, study.get_trials(deepcopy=False))
            with contextlib.suppress(UpdateFinishedTrialError):  # finished meanwhile
                if gives_up:
                    reason = given_up_reason(trial)
                    storage.set_trial_user_attr(trial_id, REASON_ATTR, reason)
                    storage.set_trial_user_attr(trial_id, GIVEN_UP_ATTR, True)
                if storage.set_trial_state_values(trial_id, TrialState.FAIL) and gives_up:
                    given_up.append(trial)
    return given_up


def continued_numbers(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of the trials that a retry continues (queued, running or done)."""
    return {t.system_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.system_attrs}


def is_continued(trial: FrozenTrial, trials: list[FrozenTrial]) -> bool:
    """Whether a retry continues `trial`."""
    return trial.number in continued_numbers(trials)


def point_of(trial: FrozenTrial) -> dict:
    """The params a trial runs: its queued ones, where it failed before it read them."""
    return trial.system_attrs.get(FIXED_PARAMS_ATTR, trial.params)


def fixed_params(trial: optuna.Trial, spec: StudySpec) -> dict:
    """The params `trial` was queued with that are no dimension of the study's space (a
    grid point's seed): Optuna never sees them as searched."""
    queued = point_of(storage_of(trial.study).get_trial(trial_id_of(trial)))
    return {name: value for name, value in queued.items() if name not in spec.space}


def failed_for_good(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The failed trials nothing continues: no retry queued after them and no other trial
    at their point done or pending (an error, or given up after its retries). A failed
    attempt that a retry continues is an interruption, not a failure."""
    continued = continued_numbers(trials)
    settled = [point_of(t) for t in trials if t.state != TrialState.FAIL]
    return [
        t for t in trials
        if t.state == TrialState.FAIL and t.number not in continued and point_of(t) not in settled
    ]  # fmt: skip


def try_failed_again(study: optuna.Study) -> int:
    """Queue each trial that failed for good to run again (a new command's fresh retries),
    continuing its MLflow run from its checkpoint: a point keeps one run whatever happens
    to its attempts. Returns how many were queued."""
    queued = 0
    for trial in failed_for_good(study.get_trials(deepcopy=False)):
        if RUN_ID_ATTR in trial.user_attrs:
            queued += continue_later(study, trial, crashed=False, fresh_retries=True)
        elif point_of(trial):
            study.enqueue_trial(point_of(trial))  # it failed before its run existed
            queued += 1
    return queued


def continue_later(
    study: optuna.Study,
    trial: FrozenTrial,
    crashed: bool,
    max_retries: int | None = None,
    fresh_retries: bool = False,
) -> bool:
    """Queue a copy of `trial` to run again, continuing its MLflow run from its checkpoint
    (`mlflow_run_id` is among the user attributes it keeps); False if not queued.

    Never twice for one trial (a second call finds the first copy). Retries count
    failures, not interruptions: a crash counts only while the run makes no progress.
    `retry_history` holds the attempts that crashed from the same checkpoint step
    (`stuck_at_step`); an attempt that started from a later checkpoint than that (the one
    before it advanced the run: a killed machine, a preemption) starts the count again.
    After `max_retries` retries from one checkpoint the trial is not queued again: it is
    given up. A stop (Ctrl-C, SIGTERM, a lost parent) counts nothing; `fresh_retries`
    (a new command trying a given-up trial again) starts the count again. `failed_trial`
    is the first trial of the chain, as in Optuna's RetryHeartbeatStaleTrialCallback.
    """
    if is_continued(trial, study.get_trials(deepcopy=False)):
        return False
    history = list(trial.system_attrs.get(RETRY_HISTORY_ATTR, []))
    stuck_at = trial.system_attrs.get(STUCK_STEP_ATTR)
    if fresh_retries:
        history, stuck_at = [], None
    if crashed:
        # Unknown (killed before its run opened): as the attempt before it started.
        started_at = trial.user_attrs.get(START_STEP_ATTR, 0)
        if stuck_at is None or started_at > stuck_at:
            history, stuck_at = [], started_at
        history.append(trial.number)
        if max_retries is not None and len(history) > max_retries:
            return False
    system_attrs = {
        **trial.system_attrs,
        FAILED_TRIAL_ATTR: trial.system_attrs.get(FAILED_TRIAL_ATTR, trial.number),
        CONTINUES_ATTR: trial.number,
        RETRY_HISTORY_ATTR: history,
        STUCK_STEP_ATTR: stuck_at,
    }
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            # Not the attempt's reason: a retry that completes has no failure to show.
            user_attrs={
                k: v for k, v in trial.user_attrs.items() if k not in (REASON_ATTR, GIVEN_UP_ATTR)
            },  # fmt: skip
            system_attrs=system_attrs,
        )
    )
    return True


def given_up_reason(trial: FrozenTrial) -> str:
    """Why a trial was given up, in a line: its attempts and the step they died from."""
    attempts = len(trial.system_attrs.get(RETRY_HISTORY_ATTR, [])) + 1
    step = trial.user_attrs.get(START_STEP_ATTR, 0)
    return f"given up: {attempts} attempts died from the checkpoint at step {step}"


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
