"""Faults a long run meets: a corrupt or truncated checkpoint, a full disk, divergence."""

import errno
import re
import subprocess
import sys

import pytest

import began.checkpoint as checkpoint_module
from began.checkpoint import PREVIOUS_NAME, CheckpointError, load_checkpoint
from began.tracking.memory_tracker import MemoryTracker
from began.training.loop import train
from tests.test_train import tiny


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    tracker = MemoryTracker(tmp_path, run_id="run")
    train(tiny(steps=8, checkpoint_every=4), tracker)  # checkpoints at 4, then 8
    last = tracker.latest_checkpoint()
    previous = last.with_name(PREVIOUS_NAME)
    assert load_checkpoint(previous).step == 4 and load_checkpoint(last).step == 8
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash of the disk
    with pytest.warns(UserWarning, match=f"{last}.*resuming from the previous checkpoint"):
        result = train(tiny(steps=12, checkpoint_every=4), tracker)
    assert result.step == 12 and tracker.starts == [False, True]
    last.write_bytes(b"not a checkpoint")
    previous.write_bytes(b"nor this")
    with pytest.raises(CheckpointError, match=f"^{last}: not a readable checkpoint"):
        train(tiny(steps=16, checkpoint_every=4), tracker)


@pytest.mark.parametrize(
    ("code", "text"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")],
)
def test_a_full_disk_or_read_only_folder_is_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, code, text
):
    # Simulated at the write: as root, chmod cannot make a folder read-only.
    real_save = checkpoint_module.torch.save
    saves = []

    def save(payload, f):
        saves.append(payload["step"])
        if len(saves) == 2:
            raise OSError(code, text)
        return real_save(payload, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    tracker = MemoryTracker(tmp_path, run_id="full")
    with pytest.raises(CheckpointError, match=f"cannot write the checkpoint .{text}"):
        train(tiny(steps=12, checkpoint_every=4), tracker)
    assert load_checkpoint(tracker.latest_checkpoint()).step == 4  # intact
    assert not list(tracker.checkpoint_dir().glob(".*.tmp"))  # no half-written file left
    assert tracker.status == "FAILED" and text in tracker.error


def test_a_diverging_run_ends_in_one_line(tmp_path):
    command = [
        sys.executable,
        "-m",
        "began.train",
        "--lr",
        "10",
        "--steps",
        "40",
        "--log-every",
        "1",
        "--quiet",
        "--device",
        "cpu",
    ]  # the demo, lr far too high
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert re.match(r"error: training diverged: M_global is (nan|inf) at step \d+;", last_line)
    assert "marked FAILED" in last_line
