"""Storage requests that survive a database restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from optuna.exceptions import UpdateFinishedTrialError

T = TypeVar("T")


def retrying(action: Callable[[], T], attempts: int = 6) -> T:
    """A storage request through a database restart: retried with backoff for ~30 s
    (pool_pre_ping then opens a fresh connection); the last failure is raised."""
    for attempt in range(attempts):
        try:
            return action()
        except UpdateFinishedTrialError:
            raise  # not a hiccup: another worker finished the trial
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")
