"""The in-memory tracker the tests train with keeps the record the MLflow tracker keeps:
the same calls on both leave the same params, metric histories, tags, statuses, texts and
checkpoints, read back from the MLflow store itself (where they differ by design, the test
says how)."""

import math
import sys

import mlflow
import pytest
import torch

import began.tracking.mlflow_tracker as mlflow_tracker
from began.checkpoint import CHECKPOINT_NAME, save_checkpoint
from began.config import TrainConfig
from began.tracking import (
    CHECKPOINT_ARTIFACT_DIR,
    ERROR_TAG,
    FAILED,
    FINISHED,
    KILLED,
    MODELS_TAG,
    RESUME_COUNT_TAG,
    RUNNING,
    MlflowTracker,
    local_path,
)
from began.tracking.memory_tracker import MemoryTracker
from began.training.learner import build_learner, snapshot

CFG = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, batch_size=2, device="cpu")
ENDINGS = [(FINISHED, None), (FAILED, "RuntimeError: boom"), (KILLED, "stopped by SIGINT")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes a second); MLflow puts
    a SQLite store's artifacts under ./mlruns, so the current folder is a temporary one."""
    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield f"sqlite:///{folder}/mlflow.db"


@pytest.fixture(scope="module")
def learner():
    return build_learner(CFG, torch.device("cpu"))


@pytest.fixture
def uploads(monkeypatch):
    """The models MlflowTracker uploads, by name: the upload itself (seconds) is left out;
    what the run records about it (the models tag) is not."""
    names: list[str] = []
    monkeypatch.setattr(mlflow_tracker, "log_model", lambda *args: names.append(args[4]))
    return names


def play(tracker, learner, end: str, error: str | None) -> tuple[str, list]:
    """One run's calls, as the loop and a study make them: created, started, killed,
    continued, ended with `end`. Returns the run id and what the tracker said on the way."""
    said = [tracker.run_id, tracker.status, tracker.latest_checkpoint()]
    tracker.finish(end, error=error)  # before `create`: no run, nothing to mark
    said.append(tracker.status)
    run_id = tracker.create()
    said += [tracker.status, tracker.create() == run_id, tracker.latest_checkpoint()]
    tracker.start(CFG, {"process": "host:1"}, resumed=False)
    said.append(tracker.status)
    tracker.log_params({"trial": 3, "note": "first"})
    tracker.log_metrics({"m_global": 0.25, "k_t": 0.0}, 1)
    tracker.log_metrics({"m_global": 0.125}, 2)
    tracker.log_metrics({"m_global": float("nan"), "k_t": 0.5}, 3)
    tracker.set_tags({"stage": 1, "device": "cpu"})
    tracker.log_text("a note\n", "notes/note.txt")
    path = tracker.checkpoint_dir() / CHECKPOINT_NAME
    save_checkpoint(path, snapshot(learner, "data"))
    tracker.checkpoint_saved(path)
    said += [tracker.latest_checkpoint() == path, tracker.has_models()]
    tracker.finish(KILLED, error="stopped by SIGTERM")
    said.append(tracker.status)
    tracker.start(CFG, {"process": "host:2"}, resumed=True)  # continued from its checkpoint
    said.append(tracker.status)
    tracker.log_metrics({"m_global": 0.0625}, 4)
    tracker.log_metrics({"m_global": 0.03125}, 4)  # the same step twice: both are kept
    tracker.log_models(learner.G, learner.D, CFG, 4, {"m_global_mean": 0.25})
    said.append(tracker.has_models())
    tracker.finish(end, error=error)
    said.append(tracker.status)
    return run_id, said


def history(entries) -> list[tuple[int, str]]:
    return sorted((step, repr(value)) for step, value in entries)


def mlflow_record(uri: str, run_id: str) -> dict:
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    artifacts = local_path(run.info.artifact_uri)
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    return {
        "status": run.info.status,
        "params": dict(run.data.params),
        # MLflow adds tags of its own (mlflow.runName, mlflow.user, ...): the project's
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "metrics": {
            key: history((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in run.data.metrics
        },
        "texts": {
            p.relative_to(artifacts).as_posix(): p.read_text()
            for p in files
            if p.parent.name != CHECKPOINT_ARTIFACT_DIR
        },
    }


def memory_record(tracker: MemoryTracker) -> dict:
    return {
        "status": tracker.status,
        # MLflow keeps a param as text; the memory tracker keeps the value it was given
        "params": {key: str(value) for key, value in tracker.params.items()},
        "tags": tracker.tags,
        "metrics": {key: history(entries) for key, entries in tracker.metrics.items()},
        "texts": tracker.texts,
    }


@pytest.mark.parametrize(("end", "error"), ENDINGS, ids=[end for end, _ in ENDINGS])
def test_the_same_calls_leave_the_same_record(tmp_path, store, learner, uploads, end, error):
    real = MlflowTracker(store, experiment="parity")
    memory = MemoryTracker(tmp_path / "memory")
    real_id, real_said = play(real, learner, end, error)
    memory_id, memory_said = play(memory, learner, end, error)

    expected_said = ["", None, None, None, RUNNING, True, None, RUNNING, True, False]
    expected_said += [KILLED, RUNNING, True, end]
    assert real_said == memory_said == expected_said
    assert uploads == ["generator", "discriminator"] and memory.models_logged == 1

    record = mlflow_record(store, real_id)
    assert record == memory_record(memory)
    assert record["status"] == end
    assert record["params"] == {
        **{key: str(value) for key, value in CFG.to_dict().items()},  # once, at the first start
        "trial": "3",
        "note": "first",
    }
    assert record["tags"] == {
        "process": "host:2",  # the latest start's
        RESUME_COUNT_TAG: "1",  # started twice
        "stage": "1",
        "device": "cpu",
        MODELS_TAG: "true",
        # why the run ended; a run that ends FINISHED keeps the error of its killed start
        ERROR_TAG: error or "stopped by SIGTERM",
    }
    assert record["metrics"] == {
        "m_global": [(1, "0.25"), (2, "0.125"), (3, "nan"), (4, "0.03125"), (4, "0.0625")],
        "k_t": [(1, "0.0"), (3, "0.5")],
    }
    assert record["texts"] == {"config.json": CFG.to_json(), "notes/note.txt": "a note\n"}

    # Another process continues the run: it finds the checkpoint where the first left it.
    real_path = real.checkpoint_dir() / CHECKPOINT_NAME
    memory_path = memory.checkpoint_dir() / CHECKPOINT_NAME
    assert real_path.parent.name == memory_path.parent.name == CHECKPOINT_ARTIFACT_DIR
    assert MlflowTracker(store, run_id=real_id).latest_checkpoint() == real_path
    assert MemoryTracker(tmp_path / "memory", run_id=memory_id).latest_checkpoint() == memory_path
    assert MlflowTracker(store, run_id=real_id).has_models()


def test_infinities_are_stored_as_the_largest_floats_in_mlflow_kept_in_memory(store, tmp_path):
    """MLflow's stores cannot hold an infinity: a diverged loss reads back as +-1.8e308
    there, and as inf from the memory tracker (NaN reads back as NaN from both)."""
    real = MlflowTracker(store, experiment="parity")
    memory = MemoryTracker(tmp_path / "memory")
    for tracker in (real, memory):
        tracker.create()
        tracker.log_metrics({"up": math.inf, "down": -math.inf, "nan": math.nan}, 7)
        tracker.finish(FAILED, error="FloatingPointError: diverged")
    record = mlflow_record(store, real.run_id)["metrics"]
    assert record["up"] == [(7, repr(sys.float_info.max))]
    assert record["down"] == [(7, repr(-sys.float_info.max))]
    assert memory.history("up") == [(7, math.inf)] and memory.history("down") == [(7, -math.inf)]
    assert record["nan"] == history(memory.history("nan")) == [(7, "nan")]
