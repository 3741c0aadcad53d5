"""Runs the rows of a check under deadlines and prints them as one fixed-width table.

A row is a named measurement with its own deadline. The runner gives each row at most
its deadline (less when the check's budget has less left): a row that runs over is cut
by SIGALRM and reported as "timed out", a row that raises is reported as "error: <first
line>", and either way the next row runs. Optional rows start only when their whole
deadline fits before the check's target time, so that the check ends on time even when
every row takes as long as it may. A watchdog thread ends the check at its budget even
if a row is stuck in native code where no signal reaches it, and prints the table of
what it has first.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from began.errors import first_line

# Row kinds, in the order the check runs them. A failed correctness row makes the
# check's exit status nonzero; speed rows always run; optional rows run if time remains.
CORRECTNESS, SPEED, OPTIONAL = "correctness", "speed", "optional"

# Statuses in the JSON; the table shows the same word before the reason.
OK, FAIL, ERROR, TIMED_OUT, SKIPPED, NOT_RUN = (
    "ok", "FAIL", "error", "timed out", "skipped", "not run"
)  # fmt: skip

# A row started with less time than this left would only be cut: it is not started.
MIN_ROW_S = 5.0
# Seconds between the rows' last deadline and the watchdog: a row cut by its alarm has
# this long to unwind and print before the watchdog ends the process.
GRACE_S = 5.0


class Skipped(Exception):
    """A row that cannot run here (a missing package, a CPU): its message says why."""


class RowTimedOut(BaseException):
    """Raised by the alarm in the row that ran past its deadline. A BaseException, so
    that library code catching Exception (or RuntimeError) does not swallow it."""


@dataclass
class Outcome:
    """What a row measured: the table's text and the same numbers for the JSON."""

    text: str
    values: dict[str, Any] = field(default_factory=dict)
    passed: bool = True  # False: a correctness row whose check failed


@dataclass
class Row:
    name: str
    kind: str  # CORRECTNESS, SPEED or OPTIONAL
    deadline_s: float
    measure: Callable[[], Outcome]


@dataclass
class Result:
    """One line of the table (and one object of the JSON)."""

    name: str
    kind: str
    status: str
    text: str
    deadline_s: float
    seconds: float
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        shown = self.text if self.status == OK else f"{self.status}: {self.text}".rstrip(": ")
        took = f"{self.seconds:.1f}" if self.status != NOT_RUN else "-"
        return f"{self.name:<50} {self.deadline_s:>4.0f} {took:>6}  {shown}"


TABLE_HEADER = f"{'row':<50} {'max':>4} {'took':>6}  result (seconds; images/s; MiB)"


# Processes a row started, killed when the row is cut or the check ends early.
_children: set[subprocess.Popen] = set()


@contextlib.contextmanager
def child_processes() -> Iterator[list[subprocess.Popen]]:
    """A list to put a row's subprocesses in: each is killed when the row ends, however
    it ends (a child blocked on a barrier would otherwise wait forever)."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for process in started:
            _children.discard(process)
            if process.poll() is None:
                process.kill()
                process.wait()


def track(process: subprocess.Popen) -> subprocess.Popen:
    """Also kill `process` if the watchdog ends the check while it runs."""
    _children.add(process)
    return process


class Check:
    """The rows run so far and the budget: prints each row as it ends, and the header."""

    def __init__(
        self,
        title: str,
        budget_s: float,
        target_s: float,
        out: Path | None,
        grace_s: float = GRACE_S,
        min_row_s: float = MIN_ROW_S,
    ) -> None:
        self.title = title
        self.budget_s = budget_s  # the watchdog ends the check here
        self.target_s = target_s  # optional rows start only if they end by then
        self.out = out  # where gpu_check.json and gpu_check.txt go, if set
        self.grace_s, self.min_row_s = grace_s, min_row_s
        self.started = time.monotonic()
        self.results: list[Result] = []
        self.lines = [title, TABLE_HEADER]
        self.row_started = self.started  # when the row that runs now began
        self._lock = threading.Lock()  # the watchdog and the main thread both print
        self._finished = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def emit(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def add(self, result: Result) -> None:
        with self._lock:
            if self._finished:
                return
            self.results.append(result)
            self.emit(result.line())

    def run(self, rows: list[Row]) -> int:
        """Run the rows in order; the exit status: 1 if a correctness row did not pass."""
        for line in self.lines:
            print(line, flush=True)
        watchdog = threading.Timer(self.budget_s, self._stop_stuck_row, args=(rows,))
        watchdog.daemon = True
        watchdog.start()
        try:
            for row in rows:
                self.add(self._run_row(row))
        finally:
            watchdog.cancel()
        return self.finish()

    def _run_row(self, row: Row) -> Result:
        # Rows end grace_s before the budget; optional rows by the target.
        ends_by = self.target_s if row.kind == OPTIONAL else self.budget_s - self.grace_s
        left = ends_by - self.elapsed()
        if row.kind == OPTIONAL and left < row.deadline_s:
            return self._not_run(row, f"{max(left, 0):.0f} s left before the target, "
                                      f"it may take {row.deadline_s:.0f}")  # fmt: skip
        if left < self.min_row_s:
            return self._not_run(row, "the budget is spent")
        deadline = min(row.deadline_s, left)
        start = self.row_started = time.monotonic()
        status, values, passed = OK, {}, True
        try:
            with _alarm(deadline):
                outcome = row.measure()
            text, values, passed = outcome.text, outcome.values, outcome.passed
            status = OK if passed else FAIL
        except RowTimedOut:
            status, text = TIMED_OUT, f"cut at {deadline:.3g} s"
        except (Skipped, ImportError) as why:  # ImportError: a package missing here
            status, text = SKIPPED, first_line(why)
        except Exception as error:  # one failing row must not cost the rest of the table
            status, text = ERROR, f"{type(error).__name__}: {first_line(error)}"[:160]
        finally:
            gc.collect()  # the row's models: free before the next row measures memory
        seconds = time.monotonic() - start
        return Result(row.name, row.kind, status, text, row.deadline_s, seconds, values)

    def _not_run(self, row: Row, why: str) -> Result:
        return Result(row.name, row.kind, NOT_RUN, why, row.deadline_s, 0.0)

    def _stop_stuck_row(self, rows: list[Row]) -> None:
        """The watchdog: the current row did not return by the budget (stuck where the
        alarm cannot reach it). Print the rest of the table, write it, and exit."""
        with self._lock:
            done = len(self.results)
            for process in list(_children):
                process.kill()
            stuck = rows[done] if done < len(rows) else None
        if stuck is not None:
            seconds = time.monotonic() - self.row_started
            self.add(Result(stuck.name, stuck.kind, TIMED_OUT, "stuck past the check's budget",
                            stuck.deadline_s, seconds))  # fmt: skip
        for row in rows[done + 1 :]:
            self.add(self._not_run(row, "the budget is spent"))
        os._exit(self.finish() or 2)  # 2: stopped by the budget

    def finish(self) -> int:
        """Write the table and its JSON under self.out; the exit status."""
        with self._lock:
            if self._finished:
                return 1
            self._finished = True
            failed = [r.name for r in self.results if r.kind == CORRECTNESS and r.status != OK]
            self.emit(f"{len(self.results)} rows in {self.elapsed():.0f} s; "
                      + (f"correctness FAILED: {', '.join(failed)}" if failed
                         else "every correctness row passed"))  # fmt: skip
            if self.out is not None:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "gpu_check.txt").write_text("\n".join(self.lines) + "\n")
                document = {
                    "title": self.title,
                    "seconds": round(self.elapsed(), 1),
                    "budget_s": self.budget_s,
                    "target_s": self.target_s,
                    "rows": [asdict(r) for r in self.results],
                }
                (self.out / "gpu_check.json").write_text(json.dumps(document, indent=1) + "\n")
            return 1 if failed else 0


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise RowTimedOut in the main thread after `seconds`."""

    def cut(signum: int, frame: object) -> None:
        raise RowTimedOut()

    previous = signal.signal(signal.SIGALRM, cut)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
