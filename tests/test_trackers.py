"""The in-memory tracker the tests train with behaves as the MLflow tracker does wherever
the training loop can tell: no run before `create`, a status, checkpoints by one name."""

import pytest
import torch

from began.checkpoint import CHECKPOINT_NAME, save_checkpoint
from began.config import TrainConfig
from began.tracking import FAILED, RUNNING, MlflowTracker
from began.tracking.memory_tracker import MemoryTracker
from began.training.learner import build_learner, snapshot

CFG = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, batch_size=2, device="cpu")


def memory(tmp_path):
    return MemoryTracker(tmp_path / "memory")


def mlflow_store(tmp_path):
    return MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", experiment="parity")


@pytest.mark.parametrize("make", [memory, mlflow_store], ids=["memory", "mlflow"])
def test_trackers_agree_on_what_the_loop_reads(tmp_path, make):
    tracker = make(tmp_path)
    assert tracker.run_id == "" and tracker.status is None
    assert tracker.latest_checkpoint() is None  # no run yet: nothing to resume
    run_id = tracker.create()
    assert run_id and tracker.run_id == run_id and tracker.status == RUNNING
    assert tracker.create() == run_id  # creating twice is one run
    assert tracker.latest_checkpoint() is None
    path = tracker.checkpoint_dir() / CHECKPOINT_NAME
    save_checkpoint(path, snapshot(build_learner(CFG, torch.device("cpu")), "data"))
    tracker.checkpoint_saved(path)
    assert tracker.latest_checkpoint() == path
    tracker.set_tags({"stage": 1})
    tracker.log_params({"gamma": 0.5})
    tracker.log_metrics({"m_global": 0.1}, 1)
    tracker.finish(FAILED, error="RuntimeError: boom")
    assert tracker.status == FAILED
