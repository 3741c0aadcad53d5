"""How an error is shown to a user (one line, never a traceback), and the error of the
tracking store, which several layers raise."""

from __future__ import annotations


class TrackingError(RuntimeError):
    """The tracking store refused a request; the message says which run or experiment."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def one_line(error: object) -> str:
    """An error's whole text on one line (some, like tarfile's, span several)."""
    return " ".join(str(error).split()) or type(error).__name__
