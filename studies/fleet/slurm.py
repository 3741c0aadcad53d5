"""What a study process knows about the Slurm task it runs in (`studies.launch` writes
the job): its identity, shown on the trials it runs, and how it requeues itself."""

from __future__ import annotations

import shutil
import subprocess

from began.tracking import slurm_task


def requeue_this_task() -> bool:
    """Put this Slurm task back in the queue (after a time-limit warning); False if not."""
    task = slurm_task()
    if task is None or shutil.which("scontrol") is None:
        return False
    # Slurm stops this task's processes and queues it again; called last, once the trials
    # are checkpointed and queued.
    done = subprocess.run(["scontrol", "requeue", task], capture_output=True, text=True)
    return done.returncode == 0
