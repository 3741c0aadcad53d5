"""Where the records live (the studies' defaults) and the one error a bad name raises."""

from __future__ import annotations

import os

from began.tracking import DEFAULT_TRACKING_URI
from studies.fleet.connection import missing_sqlite_file
from studies.spec import DEFAULT_STORAGE as DEFAULT_STORAGE


class AnalysisError(ValueError):
    """Bad input; the message starts with the option as typed (`--study NAME: ...`)."""


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the studies' default store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def require_sqlite_file(url: str, option: str) -> None:
    """Opening a missing SQLite file would create an empty database: refuse instead."""
    if missing_sqlite_file(url):
        raise AnalysisError(f"{option} {url}: no such database file")
