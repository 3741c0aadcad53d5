"""Ctrl-C, SIGTERM and a closed terminal as a request to stop between steps, not in the
middle of one.

A KeyboardInterrupt raised inside a step could leave D updated and G not; the
checkpoint written then would not be a state the run ever was in. While the
guard is active, the first SIGINT, SIGTERM or SIGHUP (the terminal was closed) only
sets a flag that the training loop checks between steps; a second SIGINT interrupts
at once.

The same flag carries the one stop that is not a signal: a study's trial that was
taken over by another worker (its heartbeats were lost) must stop without touching the
run, which now belongs to the retry (`abandon`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunAbandoned(BaseException):
    """The run now belongs to someone else: stop at once, write nothing, mark nothing.

    A BaseException, so that no `except Exception` on the way records it as a failure.
    """


class StopFlag:
    """Set by a signal (stop with a checkpoint) or by `abandon` (stop without one)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.abandoned_because = ""

    def __bool__(self) -> bool:
        return self.requested or bool(self.abandoned_because)

    def request(self, signal_name: str) -> None:
        self.requested = True
        self.signal_name = signal_name

    def abandon(self, reason: str) -> None:
        """Called from any thread; the loop raises RunAbandoned before its next step."""
        self.abandoned_because = reason


@contextmanager
def deferred_interrupts(flag: StopFlag | None = None) -> Iterator[StopFlag]:
    """Install the handlers for the duration of a run; restore the previous ones after.

    Signal handlers can only be set from the main thread; elsewhere (a study
    running trials in threads) only `abandon` can raise the flag.
    """
    flag = flag if flag is not None else StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        flag.request(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
