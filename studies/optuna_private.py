"""The one place that touches Optuna's private API.

Optuna 5 offers no public way to claim a queued trial without sampling a new one, to
reach a study's storage, or to read a live trial's storage id, and the studies need
all three. Every use goes through these functions, so an Optuna upgrade that removes
one fails at import time with a clear message instead of deep inside a worker.
The version bounds in pyproject.toml exist because of these private APIs.
No private MLflow API is used anywhere (began/tracking.py reads the public
`MlflowClient.tracking_uri`).
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage

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
                    "which studies/optuna_private.py wraps"
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
