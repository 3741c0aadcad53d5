"""What a study launcher relies on from Slurm, proven on a real one-node cluster.

An array job whose tasks run side by side; `scancel -b --signal=TERM` reaching the batch
script (so a worker can finish its trial and exit cleanly); `scontrol requeue` running a
task again with SLURM_RESTART_COUNT raised (so a worker can resume); and nothing left
running afterwards. Marked `integration`; skipped where Slurm or root is missing
(see tests/slurm_cluster.py for the Debian packages).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import tests.slurm_cluster as slurm_cluster_module
from tests.slurm_cluster import SlurmCluster, processes_of, slurm_available, slurm_cluster

pytestmark = pytest.mark.integration

# Each run of a task writes run-<task>-<restart count>; the TERM trap writes term-<...>.
# The file is written aside and renamed, so the test never reads it half-written. The sleep
# runs in the background because bash runs a trap only once the foreground command ends.
BATCH_SCRIPT = """\
#!/bin/bash
out={out}
run="$SLURM_ARRAY_TASK_ID-${{SLURM_RESTART_COUNT:-0}}"
trap 'echo "$SLURM_ARRAY_TASK_ID" > "$out/.term-$run" && mv "$out/.term-$run" "$out/term-$run";
      kill "$child"; exit 0' TERM
echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $(hostname) ${{SLURM_RESTART_COUNT:-0}}" \\
    > "$out/.run-$run"
mv "$out/.run-$run" "$out/run-$run"
sleep 300 &
child=$!
wait "$child"
"""


def wait_for_file(path: Path, cluster: SlurmCluster, job_id: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{path.name} not written after {timeout} s; job {job_id}: "
                f"{cluster.job_states(job_id)}\n{cluster.logs()}"
            )
        time.sleep(0.2)
    return path.read_text()


def wait_for_state(
    cluster: SlurmCluster, job_id: int, task: str, state: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while (states := cluster.job_states(job_id)).get(task) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task} of job {job_id} not {state}: {states}")
        time.sleep(0.2)


def test_array_signal_requeue_and_cleanup(tmp_path):
    if reason := slurm_available():
        pytest.skip(reason)
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "task.sh"
    script.write_text(BATCH_SCRIPT.format(out=out))
    # Two CPUs even on a one-CPU runner, so that both array tasks run at once.
    with slurm_cluster(cpus=max(2, os.cpu_count() or 1)) as cluster:
        folder, pids = cluster.folder, dict(cluster.pids)
        job_id = cluster.submit(
            "--array=0-1", "--requeue", "--signal=TERM@60", "--cpus-per-task=1", "--mem=100M",
            f"--output={tmp_path}/slurm-%A_%a.out", str(script),
        )  # fmt: skip

        # Both tasks run at once, as separate tasks of one array job, on this machine.
        runs = [wait_for_file(out / f"run-{task}-0", cluster, job_id).split() for task in "01"]
        expected = [[str(job_id), task, socket.gethostname()] for task in "01"]
        assert [run[:3] for run in runs] == expected
        assert cluster.job_states(job_id) == {"0": "RUNNING", "1": "RUNNING"}

        # SIGTERM to the batch script only: its trap runs and it exits on its own terms.
        cluster.run("scancel", "--batch", "--signal=TERM", f"{job_id}_0")
        assert wait_for_file(out / "term-0-0", cluster, job_id).strip() == "0"
        wait_for_state(cluster, job_id, "0", "COMPLETED")

        # A requeued task is stopped, queued again and rerun with SLURM_RESTART_COUNT=1.
        cluster.run("scontrol", "requeue", f"{job_id}_1")
        rerun = wait_for_file(out / "run-1-1", cluster, job_id).split()
        assert rerun[:2] == [str(job_id), "1"] and rerun[3] == "1"
        assert cluster.job_states(job_id) == {"0": "COMPLETED", "1": "RUNNING"}

        cluster.run("scancel", "--batch", "--signal=TERM", f"{job_id}_1")
        wait_for_file(out / "term-1-1", cluster, job_id)
        assert cluster.wait_until_done(job_id, timeout=30) == {"0": "COMPLETED", "1": "COMPLETED"}

        # Left running for the cleanup: a job that ignores SIGTERM, and a process it
        # detached (reparented to init, so proctrack/linuxproc no longer sees it).
        wrap = "trap '' TERM; (setsid sleep 301 &); sleep 302"
        stubborn = cluster.submit("--mem=100M", "--output=/dev/null", "--wrap", wrap)
        wait_for_state(cluster, stubborn, "", "RUNNING")

    # The daemons, the job steps, the jobs' processes and the folder are all gone.
    assert processes_of(folder) == []
    if shutil.which("pgrep"):
        left = subprocess.run(["pgrep", "-a", "-f", str(folder)], capture_output=True, text=True)
        assert left.returncode == 1, left.stdout
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still running"
    assert not folder.exists()


def test_a_failed_start_stops_what_it_started(monkeypatch):
    if reason := slurm_available():
        pytest.skip(reason)
    folders, real_mkdtemp, real_conf = [], tempfile.mkdtemp, slurm_cluster_module._slurm_conf

    def mkdtemp(**kwargs) -> str:
        folders.append(real_mkdtemp(**kwargs))
        return folders[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    # munged starts, then slurmctld and slurmd reject the configuration and exit.
    monkeypatch.setattr(
        slurm_cluster_module, "_slurm_conf", lambda *args: real_conf(*args) + "NoSuchSetting=1\n"
    )
    with pytest.raises(RuntimeError, match="NoSuchSetting") as error, slurm_cluster():
        pass
    assert "slurmctld exited" in str(error.value)
    assert processes_of(Path(folders[0])) == []
    assert not Path(folders[0]).exists()
