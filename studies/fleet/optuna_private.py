"""The one place that touches Optuna's private API.

Optuna 5 offers no public way to claim a queued trial without sampling a new one, to
reach a study's storage, to read a live trial's storage id, or to tell a trial that
never beat from one whose beats stopped, and the studies need all four. Every use goes
through these functions, so an Optuna upgrade that removes one fails at import time (or
in tests/test_private_api.py) with a clear message instead of deep inside a worker.
The version bounds in pyproject.toml exist because of these private APIs.
No private MLflow API is used anywhere (began/tracking/mlflow_tracker.py reads the public
`MlflowClient.tracking_uri`).
"""

from __future__ import annotations

import datetime

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

_REQUIRED = {
    optuna.study.Study: ("_pop_waiting_trial_id",),
}


def _check_private_api() -> None:
    """Raise ImportError naming the Optuna version and the first private API missing."""
    for owner, names in _REQUIRED.items():
        for name in names:
            if not hasattr(owner, name):
                raise ImportError(
                    f"optuna {optuna.__version__} lacks {owner.__name__}.{name}, "
                    "which studies/fleet/optuna_private.py wraps"
                )


_check_private_api()


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage (private `Study._storage`).

    Public Study methods read and write trials only through sampling/telling; the
    heartbeat and a trial's re-read need the storage itself.
    """
    return study._storage


def trial_id_of(trial: optuna.Trial) -> int:
    """The storage id of a live trial (private `Trial._trial_id`).

    `Trial.number` is per study, but storage calls (heartbeat, get_trial) take the id.
    """
    return trial._trial_id


def pop_waiting_trial_id(study: optuna.Study) -> int | None:
    """Claim the oldest WAITING (enqueued) trial (private `Study._pop_waiting_trial_id`).

    Public `Study.ask` samples a brand-new trial when the queue is empty; a grid sweep
    must never do that.
    """
    return study._pop_waiting_trial_id()


def stale_trial_ids(study: optuna.Study, grace_s: float) -> list[int]:
    """RUNNING trials of the study that no worker runs any more (private RDB tables).

    Stale: a heartbeat older than `grace_s` by the database's clock (as Optuna's own
    `_get_stale_trial_ids` decides), or no heartbeat at all and claimed more than `grace_s`
    ago. Optuna's check skips trials without a heartbeat, so a worker killed between
    claiming a trial and its first beat would leave it RUNNING forever. The claim time is
    Optuna's `datetime_start`, stored in UTC from the claiming host's clock, so it is
    compared with this host's clock.
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    trial, beat = models.TrialModel, models.TrialHeartbeatModel
    query = (
        sqlalchemy.select(trial.trial_id, trial._datetime_start_utc, beat.heartbeat)
        .outerjoin(beat, beat.trial_id == trial.trial_id)
        .where(trial.study_id == study._study_id, trial.state == TrialState.RUNNING)
    )
    with storage.engine.connect() as connection:
        database_now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        rows = connection.execute(query).all()
    database_now = database_now.replace(tzinfo=None)  # PostgreSQL's is aware, the column not
    utc_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    grace = datetime.timedelta(seconds=grace_s)
    stale = []
    for trial_id, started, heartbeat in rows:
        if heartbeat is not None:
            if database_now - heartbeat.replace(tzinfo=None) > grace:
                stale.append(trial_id)
        elif started is None or utc_now - started > grace:
            stale.append(trial_id)
    return stale
