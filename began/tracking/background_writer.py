"""One thread that writes queued metrics, images and uploads to a tracking store, so that
a training step never waits on the store (and a store that is briefly away loses nothing)."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from typing import Any

WRITE_INTERVAL_S = 2.0  # how often the queue is drained when nothing asks sooner


class BackgroundWriter:
    """Drains queued metrics and tasks into `flush(metrics, tasks)` from its own thread."""

    def __init__(self, flush: Callable[[list[Any], list[Callable[[], None]]], None]) -> None:
        self._flush = flush
        self._metrics: list[Any] = []
        self._tasks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="tracking-writer", daemon=True)
        self._thread.start()

    def add_metrics(self, metrics: list[Any]) -> None:
        with self._lock:
            self._metrics.extend(metrics)

    def add_task(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._tasks.append(task)
        self._wake.set()

    def _drain(self) -> None:
        with self._lock:
            metrics, self._metrics = self._metrics, []
            tasks, self._tasks = self._tasks, []
        try:
            self._flush(metrics, tasks)
            self._failures = 0
        except Exception as error:  # the store may be down: keep the data, retry later
            with self._lock:
                self._metrics[:0] = metrics
                self._tasks[:0] = tasks
            self._failures += 1
            if self._failures == 1:
                warnings.warn(f"tracking store write failed, will retry: {error}", stacklevel=1)
            if self._stopped:
                raise

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(WRITE_INTERVAL_S)
            self._wake.clear()
            with contextlib.suppress(Exception):
                self._drain()

    def close(self) -> None:
        """Stop the thread and write what is left, in the caller's thread."""
        self._stopped = True
        self._wake.set()
        self._thread.join()
        self._drain()
