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
