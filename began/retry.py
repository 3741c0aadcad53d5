"""Calls to a store (a database, a tracking server) that survive a short outage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Doubling waits of 1, 2, 4, 8, 16 s: ~30 s in all, enough for a database or an
# mlflow server to restart, short enough that a store that is gone is reported soon.
DEFAULT_ATTEMPTS = 6


def retrying(
    action: Callable[[], T],
    attempts: int = DEFAULT_ATTEMPTS,
    give_up_on: tuple[type[BaseException], ...] = (),
    first_wait: float = 1.0,
) -> T:
    """Run `action`, retrying with doubling waits from `first_wait` seconds; the last
    failure is raised.

    Errors of the types in `give_up_on` are not hiccups (the request can never succeed)
    and are raised at once.
    """
    for attempt in range(attempts):
        try:
            return action()
        except give_up_on:
            raise
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(first_wait * 2**attempt)
    raise AssertionError("unreachable")
