"""URLs of the stores a study and its runs use: masked for display, checked before use."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from began.errors import TrackingError


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe for params, logs and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def check_tracking_uri(uri: str | None, option: str = "--tracking-uri") -> None:
    """An MLflow server that does not answer is a one-line error before any work starts,
    not minutes of MLflow's own retries later. Local stores need no check."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10):
            pass
    except Exception as error:
        reason = getattr(error, "reason", None) or error
        raise TrackingError(
            f"{option} {mask_url(uri)}: cannot reach the MLflow server ({reason})"
        ) from None


def local_path(uri: str) -> Path | None:
    """The folder behind a file artifact URI, or None for remote stores."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None
