"""What this process may use of the machine it runs on."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, which is what a Slurm task
    (`--cpus-per-task` with task/affinity or cgroups), `taskset` or a container's cpuset
    allows, not the machine's count (64 on a node where the task was given 4)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity masks on this platform (macOS)
        return os.cpu_count() or 1
