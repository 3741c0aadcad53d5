"""The one retry policy for requests to a store (the Optuna database, the MLflow tracking
server and its artifact store): a request that fails is tried again after each wait of
`RETRY_WAITS_S`, and the last failure is raised."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# The waits before each retry, in seconds: 7 attempts over ~47 s. A PostgreSQL or
# `mlflow server` restart takes up to ~30 s: the attempt at 31 s usually finds the store
# back, and the one at 47 s leaves a slow restart room. Doubling keeps a short hiccup (a
# busy SQLite file) short; the cap at 16 s reports a store that is gone within a minute.
RETRY_WAITS_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 16.0)


def retrying(action: Callable[[], T], give_up_on: tuple[type[BaseException], ...] = ()) -> T:
    """Run `action`, and again after each wait of `RETRY_WAITS_S` while it fails; the
    last failure is raised.

    Errors of the types in `give_up_on` are not hiccups (the request can never succeed)
    and are raised at once.
    """
    for wait_s in RETRY_WAITS_S:
        try:
            return action()
        except give_up_on:
            raise
        except Exception:
            time.sleep(wait_s)
    return action()  # the last attempt: its failure is the one raised
