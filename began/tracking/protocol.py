"""What every tracker is: the `Tracker` protocol a training run writes through, the
statuses a run ends with, the tags the project reads back, and the rule that counts a
run's restarts. No MLflow here: `mlflow_tracker` and `memory_tracker` implement it."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from began.config import TrainConfig

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
DEFAULT_EXPERIMENT = "began"
# MLflow's own default store, what a plain `mlflow ui` in the same folder reads.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limits for one log_batch call
MAX_PARAMS_PER_BATCH = 100
RESUME_COUNT_TAG = "resume_count"  # how many times a run was continued from a checkpoint
ERROR_TAG = "error"  # why a run ended FAILED or KILLED
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag that nests a run under another
MODELS_TAG = "models_logged"  # "true" once the final models are in the run


# Longest values the MLflow stores accept; longer ones are cut, not refused.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000


class Tracker(Protocol):
    """One run's record. `run_id` is "" until `create` (or names the run being continued)."""

    run_id: str

    @property
    def status(self) -> str | None: ...  # RUNNING, FINISHED, FAILED, KILLED; None: not created
    def create(self) -> str: ...
    def start(self, cfg: TrainConfig, tags: dict[str, str], resumed: bool) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, key: str, image: np.ndarray, step: int) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_artifacts(self, folder: Path | str, artifact_path: str) -> None: ...
    def checkpoint_dir(self) -> Path: ...
    def checkpoint_saved(self, path: Path) -> None: ...
    def latest_checkpoint(self) -> Path | None: ...
    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None: ...
    # G and D as the run's models, saved at `step`, with the final evaluation `metrics`.
    def log_models(
        self, G: nn.Module, D: nn.Module, cfg: TrainConfig, step: int, metrics: dict[str, float]
    ) -> None: ...
    def has_models(self) -> bool: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def finish(self, status: str, error: str | None = None) -> None: ...  # stops the below too
    # Stop sampling the machine into the run (system metrics, from `start` on): a process
    # that lets a run go without finishing it (another worker took it over) calls it.
    def stop_system_metrics(self) -> None: ...
    def close(self) -> None: ...  # write what is queued; the status stays as it is


def slurm_task() -> str | None:
    """The Slurm task this process runs in: `JOB_TASK` for a job array's task, `JOB` for a
    plain job, None outside Slurm. Runs and trials show it beside `process_identity`."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def process_identity() -> str:
    """host:pid of this process: who started a run (the `process` tag) and whose system
    metrics a run holds (their node id)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def next_resume_count(tags: dict[str, str], params: dict[str, Any]) -> str:
    """The resume count a new start of a run writes: 0 on its first start, one more on
    each later one. A run was started before when it has a resume count (or params, if an
    older version started it): a restart, from a checkpoint or from step 0 when the last
    start died before its first step."""
    if RESUME_COUNT_TAG not in tags and not params:
        return "0"
    return str(int(tags.get(RESUME_COUNT_TAG, "0")) + 1)
