"""Ctrl-C and SIGTERM as a request to stop between steps, not in the middle of one.

A KeyboardInterrupt raised inside a step could leave D updated and G not; the
checkpoint written then would not be a state the run ever was in. While the
guard is active, the first SIGINT or SIGTERM only sets a flag that the training
loop checks between steps; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def __bool__(self) -> bool:
        return self.requested


@contextmanager
def deferred_interrupts() -> Iterator[StopFlag]:
    """Install the handlers for the duration of a run; restore the previous ones after.

    Signal handlers can only be set from the main thread; elsewhere (a study
    running trials in threads) the flag simply never rises.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        flag.requested = True
        flag.signal_name = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
