"""The one place that touches Optuna's private API (and its tables).

Optuna offers no public way to reach a study's storage, to read a trial's storage id,
or to tell a trial that never beat from one whose beats stopped, and the studies need
all three: `Study._storage`, `_trial_id` (of `Trial` and `FrozenTrial`), the RDB
storage's `engine` (under the cache's `_backend`), and the `trials` and
`trial_heartbeats` tables by their columns. Every use goes through these functions, so
an Optuna that lacks one fails with a message naming it, not deep inside a worker;
tests/test_private_api.py checks each, and CI runs it with the lowest Optuna that
pyproject.toml admits. Claiming a queued trial uses Optuna's public storage calls.
No private MLflow API is used anywhere (began/tracking/mlflow_tracker.py reads the public
`MlflowClient.tracking_uri`).
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState


def _private(owner: object, name: str) -> Any:
    """`owner.name`, or an error naming the Optuna version and what is missing (not an
    AttributeError deep inside a worker)."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise ImportError(
            f"optuna {optuna.__version__} lacks {type(owner).__name__}.{name}, which "
            "studies/fleet/optuna_private.py uses; install a version pyproject.toml admits"
        ) from None


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage (private `Study._storage`).

    Public Study methods read and write trials only through sampling/telling; the
    heartbeat and a trial's re-read need the storage itself.
    """
    return _private(study, "_storage")


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage id of a trial (private `_trial_id`, of a live or a frozen trial).

    `Trial.number` is per study, but storage calls (heartbeat, get_trial) take the id.
    """
    return _private(trial, "_trial_id")


def pop_waiting_trial_id(study: optuna.Study) -> int | None:
    """Claim the oldest WAITING (queued) trial, or None: Optuna's public storage calls,
    `get_all_trials(states=(WAITING,))` then `set_trial_state_values(RUNNING)`, which
    answers False when another worker took the trial first.

    `Study.ask` would sample a brand-new trial when the queue is empty; a grid sweep
    must never do that.
    """
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if storage.set_trial_state_values(trial_id_of(trial), TrialState.RUNNING):
            return trial_id_of(trial)
    return None


def stale_trial_ids(study: optuna.Study, grace_s: float) -> list[int]:
    """RUNNING trials of the study that no worker runs any more (Optuna's RDB tables).

    Stale: a heartbeat older than `grace_s` by the database's clock (as Optuna's own
    `_get_stale_trial_ids` decides), or no heartbeat at all and claimed more than `grace_s`
    ago. Optuna's check skips trials without a heartbeat, so a worker killed between
    claiming a trial and its first beat would leave it RUNNING forever. The claim time is
    Optuna's `datetime_start`, stored in UTC from the claiming host's clock, so it is
    compared with this host's clock.
    """
    database_now, rows = _running_heartbeats(study)
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


def heartbeat_ages(study: optuna.Study) -> dict[int, float | None]:
    """Seconds since each RUNNING trial's last heartbeat, by the database's clock (None:
    claimed, not yet beating), keyed by trial id."""
    database_now, rows = _running_heartbeats(study)
    return {trial_id: None if beat is None else
            (database_now - beat.replace(tzinfo=None)).total_seconds()
            for trial_id, _, beat in rows}  # fmt: skip


def _running_heartbeats(study: optuna.Study) -> tuple[datetime.datetime, list[Any]]:
    """The database's now, and (trial id, claim time, last heartbeat) of each RUNNING trial."""
    import sqlalchemy

    storage = storage_of(study)
    storage = getattr(storage, "_backend", storage)  # the RDB storage under Optuna's cache
    # Optuna's tables by their columns (versioned by Optuna's own migrations), not its ORM
    # classes, whose private attribute names change between releases.
    query = sqlalchemy.text(
        "SELECT t.trial_id, t.datetime_start, h.heartbeat FROM trials t "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING'"
    ).columns(
        sqlalchemy.column("trial_id", sqlalchemy.Integer),
        sqlalchemy.column("datetime_start", sqlalchemy.DateTime),
        sqlalchemy.column("heartbeat", sqlalchemy.DateTime),
    )
    study_id = storage.get_study_id_from_name(study.study_name)
    with _private(storage, "engine").connect() as connection:
        database_now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        rows = connection.execute(query, {"study_id": study_id}).all()
    return database_now.replace(tzinfo=None), list(rows)  # PostgreSQL's now is aware
