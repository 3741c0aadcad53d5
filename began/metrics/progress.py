"""Count, rate and ETA of a long feature extraction, wherever the output goes.

The real images' features take minutes to hours on a CPU (LFW's 13,194 images at 32x32
on 2 threads: 24 minutes) before the first trial starts. On a terminal that is a tqdm
bar; in a log file a bar's carriage returns are one unreadable line written at the end,
so there it is a plain line every ~10%, flushed as it is written.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

PLAIN_STEPS = 10  # lines per run when the stream is not a terminal: one every 10%


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class CountProgress:
    """`update(n)` after each batch of `total` items; `close()` at the end."""

    def __init__(
        self, total: int, label: str, unit: str = "images", stream: TextIO | None = None
    ) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self.next_line = 1  # the next tenth that earns a plain line
        self.bar = None
        if _is_terminal(self.stream):
            self.bar = tqdm(total=total, desc=label, unit=unit.rstrip("s") or unit,
                            file=self.stream, dynamic_ncols=True, smoothing=0.1)  # fmt: skip
        else:
            self._line(f"{label}: {total:,} {unit} to go")

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        while self.total and self.done * PLAIN_STEPS >= self.next_line * self.total:
            self.next_line += 1
            if self.done < self.total:  # the last line is close()'s
                self._line(self._status())

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} "
            f"({self.done / self.total:.0%}), {rate:.1f} {self.unit}/s, ETA {_duration(eta)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        took = f"{_duration(elapsed)} ({rate:.1f} {self.unit}/s)"
        self._line(f"{self.label}: {self.done:,} {self.unit} in {took}")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False
