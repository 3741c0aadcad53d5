"""The trial queue of a study: taking a queued trial (a grid point or a retry), asking
the sampler for a new one, queueing a stopped trial again, and the heartbeats that tell
the other workers a trial is alive."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from studies.connection import claim_lock
from studies.optuna_private import pop_waiting_trial_id, storage_of, trial_id_of
from studies.schema import FAILED_TRIAL_ATTR, RETRY_HISTORY_ATTR
from studies.spec import StudySpec


def is_retry(trial: FrozenTrial) -> bool:
    """A queued copy of an earlier trial (its worker died, or Ctrl-C stopped it)."""
    return FAILED_TRIAL_ATTR in trial.system_attrs


def claim_queued_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """Take a WAITING trial (a grid point or a retry) and mark it RUNNING, or None.

    Study.ask would sample a brand-new trial when the queue is empty; a grid sweep
    must never do that (two workers could then run one point twice), so the queue
    is read directly, under `claim_lock`: two workers never claim the same trial.
    """
    with claim_lock(spec):
        trial_id = pop_waiting_trial_id(study)
    return None if trial_id is None else optuna.Trial(study, trial_id)


def new_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial:
    """A fresh trial for the sampler to fill (search studies)."""
    with claim_lock(spec), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
        return study.ask()


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a copy of `trial` to run again, continuing its MLflow run from its checkpoint.

    The same bookkeeping as RetryHeartbeatStaleTrialCallback, so a Ctrl-C'd trial and a
    killed one look alike: `failed_trial` is the first trial of the chain.
    """
    history = [*trial.system_attrs.get(RETRY_HISTORY_ATTR, []), trial.number]
    system_attrs = {
        **trial.system_attrs, FAILED_TRIAL_ATTR: history[0], RETRY_HISTORY_ATTR: history
    }  # fmt: skip
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=system_attrs,
        )
    )


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval_s: float) -> Iterator[None]:
    """Beat for `trial` while the block runs, as Study.optimize does for its trials.

    Unlike Optuna's own thread, a failed beat (the database restarting) does not end the
    thread: it beats again at the next interval, so a short outage does not make a
    healthy trial look dead to the other workers.
    """
    storage = storage_of(study)
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id_of(trial))
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
