"""Fault paths of a single run, each the reproduction of one way work was lost or a run
was left hanging: a kill at the wrong moment, a store that fails a download, a process
that dies while logging its models, a closed terminal, a leftover file, bad values."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import began.training.loop as loop_module
from began.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, load_checkpoint, save_checkpoint
from began.cli import resume_command
from began.config import ConfigError, TrainConfig
from began.retry import RETRY_WAITS_S
from began.tracking import FAILED, FINISHED, KILLED, RUNNING, MlflowTracker, TrackingError
from began.tracking.memory_tracker import MemoryTracker
from began.training.learner import build_learner, snapshot
from began.training.loop import train
from began.training.recorder import EvalReport
from studies.pruning import HealthRule, HealthState
from tests.test_train import TINY, tiny


class Killed(BaseException):
    """A SIGKILL, as far as the code under test can tell: nothing after it runs."""


def as_if_killed(tracker: MemoryTracker) -> None:
    """What a SIGKILL leaves: the run RUNNING, whatever the dying process tried to mark."""
    tracker._status = RUNNING


class KillAfterCheckpoint(MemoryTracker):
    """Dies right after writing the checkpoint of `at_step` (once)."""

    def __init__(self, root, at_step):
        super().__init__(root, run_id="killed")
        self.at_step = at_step

    def checkpoint_saved(self, path):
        if self.at_step is not None and load_checkpoint(path).step == self.at_step:
            self.at_step = None
            raise Killed


def test_a_resume_after_a_kill_at_an_evaluation_and_checkpoint_step_loses_no_evaluation(tmp_path):
    cfg = tiny(steps=12, eval_every=4, checkpoint_every=4, metrics="")
    unbroken = MemoryTracker(tmp_path / "unbroken")
    train(cfg, unbroken)
    tracker = KillAfterCheckpoint(tmp_path / "killed", at_step=8)
    with pytest.raises(Killed):
        train(cfg, tracker)
    as_if_killed(tracker)
    train(cfg, tracker)
    # Every evaluation happened once, with the unbroken run's value (one window each).
    evaluations, expected = tracker.history("m_global_mean"), unbroken.history("m_global_mean")
    assert [step for step, _ in evaluations] == [step for step, _ in expected] == [4, 8, 12]
    assert [v for _, v in evaluations] == pytest.approx([v for _, v in expected], rel=1e-6)


class CollapseCounter:
    """A should_stop with state: the health rule of a study, collapse counted in a row."""

    def __init__(self):
        self.health = HealthState(HealthRule(collapse_ssim=1e-6, patience=2))

    def __call__(self, report: EvalReport) -> str | None:
        return self.health.check(EvalReport(report.step, report.m_global,
                                            {"diversity_ssim": 0.5}))  # fmt: skip

    def state_dict(self):
        return self.health.state_dict()

    def load_state_dict(self, state):
        self.health.load_state_dict(state)


def test_the_stop_rule_s_counters_survive_a_kill(tmp_path):
    cfg = tiny(steps=12, eval_every=4, checkpoint_every=4, metrics="")
    tracker = KillAfterCheckpoint(tmp_path, at_step=4)
    with pytest.raises(Killed):
        train(cfg, tracker, should_stop=CollapseCounter())  # one collapsed evaluation
    as_if_killed(tracker)
    result = train(cfg, tracker, should_stop=CollapseCounter())  # a retry: a new rule object
    assert result.stopped_early and result.step == 8  # the second in a row, not the first
    assert result.stop_reason.startswith("collapsed")


def test_a_new_run_that_fails_before_it_starts_ends_failed(tmp_path, monkeypatch):
    """A study creates the trial's run first; an out-of-memory error while building the
    networks must not leave that run RUNNING."""

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loop_module, "build_learner", out_of_memory)
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", experiment="oom")
    tracker.create()
    with pytest.raises(Exception, match="out of memory"):
        train(TINY, tracker)
    assert tracker.status == FAILED


def test_a_resumed_run_that_fails_before_it_starts_keeps_its_ended_status(tmp_path):
    """`--resume RUN_ID --data elsewhere` of a KILLED run must not turn it FAILED."""
    tracker = MemoryTracker(tmp_path)
    train(tiny(steps=4), tracker)
    tracker.finish(KILLED)
    with pytest.raises(ValueError, match="nowhere"):  # the data loader's DataError
        train(tiny(steps=8, data=str(tmp_path / "nowhere")), tracker)
    assert tracker.status == KILLED


class DiesLoggingModels(MemoryTracker):
    def __init__(self, root):
        super().__init__(root)
        self.dying = True

    def log_models(self, G, D, cfg, step, metrics):
        if self.dying:
            self.dying = False
            raise Killed
        super().log_models(G, D, cfg, step, metrics)


def test_a_run_that_died_while_logging_its_models_is_finished_by_its_retry(tmp_path):
    tracker = DiesLoggingModels(tmp_path)
    with pytest.raises(Killed):
        train(TINY, tracker)
    as_if_killed(tracker)
    assert load_checkpoint(tracker.latest_checkpoint()).step == TINY.steps
    result = train(TINY, tracker)
    assert tracker.models_logged == 1 and tracker.status == FINISHED
    assert result.step == TINY.steps and math.isfinite(result.final.m_global)
    again = train(TINY, tracker)  # now complete: nothing is logged twice
    assert again.already_complete and tracker.models_logged == 1


def test_a_retry_on_another_device_does_not_relog_a_changed_param(tmp_path):
    # Started, never finished: no system-metrics thread to outlive the test.
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", experiment="device",
                            system_metrics=False)  # fmt: skip
    tracker.start(tiny(device="cpu"), {"device": "cpu"}, resumed=False)
    # The first attempt died before its first checkpoint; the retry runs elsewhere.
    tracker.start(tiny(device="auto"), {"device": "cpu"}, resumed=False)
    run = tracker.client.get_run(tracker.run_id)
    assert run.data.params["device"] == "cpu" and run.data.tags["device"] == "cpu"
    assert run.data.tags["resume_count"] == "1"  # started twice: continued once


@pytest.mark.parametrize("dies_in", ["_set_tags", "_log_params", "log_artifact"])
def test_a_start_killed_midway_counts_as_a_start_exactly_when_its_process_tag_is_stored(
    tmp_path, monkeypatch, dies_in
):
    """resume_count is how many starts before this one stored their process tag: the chaos
    test counts a run as hit by a kill exactly then. MLflow's log_batch commits params and
    tags in two transactions, so a kill between them once counted a start that left no tag.
    """
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    owner = LocalArtifactRepository if dies_in == "log_artifact" else SqlAlchemyStore
    original = getattr(owner, dies_in)

    def dies(self, *args, **kwargs):
        if dies_in != "_set_tags" or any(t.key == "process" for t in args[-1]):
            raise Killed  # the first write of that kind during a start
        return original(self, *args, **kwargs)

    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", experiment="killed-start",
                            system_metrics=False)  # fmt: skip
    tracker.create()
    with monkeypatch.context() as patch:
        patch.setattr(owner, dies_in, dies)
        with pytest.raises(Killed):
            tracker.start(tiny(), {"process": "host:1"}, resumed=False)
    stored = "process" in tracker.client.get_run(tracker.run_id).data.tags
    tracker.start(tiny(), {"process": "host:2"}, resumed=False)
    run = tracker.client.get_run(tracker.run_id)
    assert run.data.tags["resume_count"] == ("1" if stored else "0")
    assert run.data.tags["process"] == "host:2" and run.data.params["gamma"] == "0.5"
    assert tracker.client.list_artifacts(tracker.run_id)[0].path == "config.json"


def remote_tracker(tmp_path, run_id=None):
    """An MLflow tracker that treats its artifact store as remote (uploads, downloads)."""
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", experiment="remote", run_id=run_id)
    tracker.create()
    tracker.artifact_dir = None
    return tracker


def write_checkpoint(tracker, step):
    learner = build_learner(TINY, torch.device("cpu"))
    learner.state.step = step
    path = tracker.checkpoint_dir() / CHECKPOINT_NAME
    save_checkpoint(path, snapshot(learner, "data"))
    tracker.checkpoint_saved(path)


def test_a_failed_checkpoint_download_is_retried_then_an_error_never_step_0(tmp_path, monkeypatch):
    tracker = remote_tracker(tmp_path)
    write_checkpoint(tracker, 4)
    write_checkpoint(tracker, 8)
    tracker.close()
    names = {f.path for f in tracker.client.list_artifacts(tracker.run_id, "checkpoints")}
    assert names == {f"checkpoints/{CHECKPOINT_NAME}", f"checkpoints/{PREVIOUS_NAME}"}
    monkeypatch.setattr("began.retry.RETRY_WAITS_S", (0.0,) * len(RETRY_WAITS_S))
    retry = remote_tracker(tmp_path, run_id=tracker.run_id)
    real_download = retry.client.download_artifacts
    failures = []

    def flaky(run_id, path, dst):
        if len(failures) < 2:
            failures.append(path)
            raise ConnectionError("Connection reset by peer")
        return real_download(run_id, path, dst)

    monkeypatch.setattr(retry.client, "download_artifacts", flaky)
    assert load_checkpoint(retry.latest_checkpoint()).step == 8  # after two failures
    assert (retry.latest_checkpoint().parent / PREVIOUS_NAME).is_file()  # the fallback too

    def broken(run_id, path, dst):
        raise ConnectionError("Connection reset by peer")

    gone = remote_tracker(tmp_path, run_id=tracker.run_id)
    monkeypatch.setattr(gone.client, "download_artifacts", broken)
    with pytest.raises(TrackingError, match="cannot download the checkpoint"):
        gone.latest_checkpoint()
    empty = remote_tracker(tmp_path)  # a run with no checkpoint: the store says so
    assert empty.latest_checkpoint() is None


def test_staging_folders_are_removed_and_stale_ones_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "tmp" / f"began-staging-{dead.pid}-old"
    (stale / "checkpoints").mkdir(parents=True)
    tracker = remote_tracker(tmp_path)
    write_checkpoint(tracker, 4)
    assert not stale.exists()  # a dead process's staging folder is swept
    staging = list((tmp_path / "tmp").glob("began-staging-*"))
    assert len(staging) == 1
    tracker.finish(FINISHED)
    assert not staging[0].exists()


def test_leftover_partial_checkpoints_are_removed(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    leftover = tmp_path / f".{CHECKPOINT_NAME}.abc123.tmp"  # a kill in the middle of a write
    leftover.write_bytes(b"half a checkpoint")
    learner = build_learner(TINY, torch.device("cpu"))
    save_checkpoint(path, snapshot(learner, "data"))
    assert not leftover.exists() and load_checkpoint(path).step == 0


def test_a_closed_terminal_stops_a_run_with_a_checkpoint(tmp_path):
    command = [sys.executable, "-m", "began.train", "--steps", "5000", "--checkpoint-every",
               "2500", "--quiet", "--device", "cpu", "--image-size", "16",
               "--filters", "4"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob("mlruns/*/*/artifacts")):
        time.sleep(0.2)
    time.sleep(3.0)  # into training
    process.send_signal(signal.SIGHUP)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "continue with" in output
    [checkpoint] = tmp_path.glob(f"mlruns/*/*/artifacts/checkpoints/{CHECKPOINT_NAME}")
    assert 0 < load_checkpoint(checkpoint).step < 2500  # written at the stop


SECRET_URI = "postgresql://began:s3cret-pw@127.0.0.1:9/mlflow"


class StoreWithoutRuns:
    """An MLflow client whose store has no run (a real database store would first spend
    minutes retrying an unreachable server)."""

    def __init__(self, tracking_uri):
        self.tracking_uri = tracking_uri

    def get_run(self, run_id):
        raise ValueError(f"Run '{run_id}' not found")


class UnreachableStore:
    def __init__(self, tracking_uri):
        raise ConnectionError("connection to server at 127.0.0.1, port 9 failed")


@pytest.mark.parametrize("client", [StoreWithoutRuns, UnreachableStore])
def test_passwords_never_reach_messages(monkeypatch, client):
    assert "s3cret-pw" not in resume_command("began.train", "abc", SECRET_URI)
    monkeypatch.setattr("mlflow.MlflowClient", client)
    with pytest.raises(TrackingError) as error:
        MlflowTracker(SECRET_URI, run_id="abc")
    assert "s3cret-pw" not in str(error.value) and "began:***@" in str(error.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lambda_k", math.inf, "lambda_k: must be a finite number"),
        ("lr", math.inf, "lr: must be a finite number"),
        ("lr", math.nan, "lr: must be a finite number"),
        ("seed", 2**64, "seed: must be in"),
        ("seed", -1, "seed: must be in"),
        ("k_init", math.nan, "k_init: must be a finite number"),
    ],
)
def test_values_that_are_not_numbers_a_run_can_use_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        TrainConfig(**{field: value})


def test_a_network_too_large_for_memory_is_one_line_and_the_run_failed(tmp_path):
    tracker = MemoryTracker(tmp_path)
    with pytest.raises(Exception) as error:
        train(tiny(filters=1_000_000_000, hidden=8), tracker)
    assert str(error.value).startswith("filters, hidden, num_grid: ")
    assert tracker.status == FAILED
    command = [sys.executable, "-m", "began.train", "--filters", "1000000000", "--steps", "2",
               "--quiet", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip()
    assert err.startswith("error: --filters, --hidden, --num-grid: ") and "\n" not in err, err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch, mlflow_db):
    monkeypatch.chdir(tmp_path)  # began.train's default store lands here
