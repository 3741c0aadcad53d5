"""Storage requests that survive a database restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from optuna.exceptions import UpdateFinishedTrialError

import began.retry as retry

T = TypeVar("T")


def retrying(action: Callable[[], T], attempts: int = retry.DEFAULT_ATTEMPTS) -> T:
    """A storage request through a database restart: retried with backoff for ~30 s
    (pool_pre_ping then opens a fresh connection); the last failure is raised. A trial
    that another worker finished is no hiccup and is raised at once."""
    return retry.retrying(action, attempts, give_up_on=(UpdateFinishedTrialError,))
