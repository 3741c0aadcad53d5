import shutil
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is faster than two that wait on each other,
# and far faster when the machine is busy with something else.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Dataset and statistics caches in a per-session temp folder, never in ~/.cache."""
    monkeypatch.setenv("BEGAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


@pytest.fixture
def tiny_network(tmp_path):
    """A cheap TorchScript stand-in for Inception that returns (N, 8, 1, 1) features."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Conv2d(3, 8, 4), torch.nn.Tanh()
    )
    path = tmp_path / "tiny_network.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script/save are deprecated
        torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with MLflow's whole migration chain applied (1.5 s a store),
    made once a session, and its experiments removed: a store opened on a copy makes its
    Default experiment afresh, with artifacts under the copy's folder, not this one."""
    import mlflow  # only a session that asks for a store pays for the import

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM experiment_tags")
        db.execute("DELETE FROM experiments")
    return path


@pytest.fixture
def mlflow_db(tmp_path, migrated_mlflow_db, monkeypatch) -> str:
    """An empty, migrated tmp_path/mlflow.db (MLflow's default store when a test runs in
    tmp_path); returns its URI. The test runs in tmp_path: MLflow puts an experiment's
    artifacts in ./mlruns of the folder it is created from, which must not be the
    project's."""
    shutil.copyfile(migrated_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path}/mlflow.db"
