"""Experiment tracking behind one small interface: the trainer, the studies and the reports
call a `Tracker`; none of them knows where the numbers go.

- `protocol`: the `Tracker` protocol, run statuses, the tags read back, restart counting;
- `mlflow_tracker`: `MlflowTracker`, one MLflow run, and run look-ups (`find_runs`);
- `memory_tracker`: `MemoryTracker`, everything in memory, for tests;
- `mlflow_models`: a run's networks as named LoggedModels, the registry, loading back;
- `background_writer`, `remote_checkpoints`, `urls`: what `MlflowTracker` is made of.

This package never imports `began.training`: tracking sits beside training.
"""

from began.errors import TrackingError
from began.tracking.mlflow_models import (
    GENERATOR,
    MODEL_PREFIX_TAG,
    load_generator,
    register_generator,
)
from began.tracking.mlflow_tracker import (
    CHECKPOINT_ARTIFACT_DIR,
    MlflowTracker,
    experiment_id,
    find_runs,
    run_exists,
    with_retries,
)
from began.tracking.protocol import (
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    ERROR_TAG,
    FAILED,
    FINISHED,
    KILLED,
    MODELS_TAG,
    PARENT_RUN_TAG,
    RESUME_COUNT_TAG,
    RUNNING,
    Tracker,
    next_resume_count,
    process_identity,
    slurm_task,
)
from began.tracking.urls import check_tracking_uri, local_path, mask_url

__all__ = [
    "CHECKPOINT_ARTIFACT_DIR",
    "DEFAULT_EXPERIMENT",
    "DEFAULT_TRACKING_URI",
    "ERROR_TAG",
    "FAILED",
    "FINISHED",
    "GENERATOR",
    "MODEL_PREFIX_TAG",
    "KILLED",
    "MODELS_TAG",
    "PARENT_RUN_TAG",
    "RESUME_COUNT_TAG",
    "RUNNING",
    "MlflowTracker",
    "Tracker",
    "TrackingError",
    "check_tracking_uri",
    "experiment_id",
    "find_runs",
    "run_exists",
    "load_generator",
    "register_generator",
    "local_path",
    "mask_url",
    "next_resume_count",
    "process_identity",
    "slurm_task",
    "with_retries",
]
