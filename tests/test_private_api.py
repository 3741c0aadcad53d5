"""The Optuna private APIs wrapped in studies/fleet/optuna_private.py still exist and work."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from studies.fleet.optuna_private import (
    pop_waiting_trial_id,
    stale_trial_ids,
    storage_of,
    trial_id_of,
)


def test_every_private_name_exists_on_a_real_study(tmp_path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="p")
    trial = study.ask()
    storage = storage_of(study)
    rdb = getattr(storage, "_backend", storage)
    assert isinstance(rdb, optuna.storages.RDBStorage), f"optuna {optuna.__version__}: {rdb}"
    assert rdb.engine.url.drivername == "sqlite"
    frozen = storage.get_trial(trial_id_of(trial))
    assert trial_id_of(frozen) == trial_id_of(trial)


def test_a_missing_private_name_is_named_with_the_version() -> None:
    with pytest.raises(ImportError, match=f"optuna {optuna.__version__} lacks object._trial_id"):
        trial_id_of(object())


def test_two_claims_of_one_queued_trial_one_wins(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = optuna.create_study(storage=storage, study_name="claim")
    first.enqueue_trial({"x": 1.0})
    second = optuna.load_study(storage=storage, study_name="claim")
    waiting = storage_of(second).get_all_trials(second._study_id, states=(TrialState.WAITING,))
    assert pop_waiting_trial_id(first) == trial_id_of(waiting[0])
    # The second worker read the trial WAITING before the first claimed it: it loses.
    assert not storage_of(second).set_trial_state_values(
        trial_id_of(waiting[0]), TrialState.RUNNING
    )
    assert pop_waiting_trial_id(second) is None


def test_adapter_on_a_real_study(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="private-api")
    study.enqueue_trial({"x": 1.0})
    trial_id = pop_waiting_trial_id(study)
    assert isinstance(trial_id, int), f"optuna {optuna.__version__}: pop returned {trial_id!r}"
    assert pop_waiting_trial_id(study) is None, "the queue held one trial only"
    trial = optuna.Trial(study, trial_id)
    assert trial_id_of(trial) == trial_id, f"optuna {optuna.__version__}: Trial._trial_id changed"
    frozen = storage_of(study).get_trial(trial_id_of(trial))
    assert frozen.state == optuna.trial.TrialState.RUNNING
    assert frozen.params == {} and frozen.system_attrs["fixed_params"] == {"x": 1.0}


def test_stale_trials_read_from_the_heartbeat_table(tmp_path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="stale")
    assert isinstance(study._study_id, int), f"optuna {optuna.__version__}: Study._study_id"
    for _ in range(3):
        study.enqueue_trial({})
    silent, beating, fresh = (pop_waiting_trial_id(study) for _ in range(3))
    storage.record_heartbeat(beating)
    with sqlite3.connect(tmp_path / "optuna.db") as db:  # claims and the beat, 3 s ago
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-3 seconds')")
        db.execute("UPDATE trials SET datetime_start = datetime(datetime_start, '-3 seconds')")
    storage.record_heartbeat(fresh)  # beat just now
    assert stale_trial_ids(study, grace_s=1.0) == sorted([silent, beating])
    assert stale_trial_ids(study, grace_s=60.0) == []
    study.tell(optuna.Trial(study, silent), state=optuna.trial.TrialState.FAIL)
    assert stale_trial_ids(study, grace_s=1.0) == [beating]  # finished trials never are
